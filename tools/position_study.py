#!/usr/bin/python3
"""Issue 18's study of where open-loop replay and closed loop disagree, and of predictors that might
rank the close competitors without a calibration run of each policy. Reads what
tools/position-study.sh made (after tools/validate_calibration.sh):

  VAL/traceA, VAL/calib.yaml, VAL/calA*/measured/*.yaml   the calibration (corpus A)
  VAL/measB/plans.csv                                      every grid configuration measured on held-out B
  WORK/energy/NAME.npy      replay's residual energy per (sequence, layer, decode step) on A's trace
  WORK/posA/NAME.npy        closed loop ΔNLL per (sequence, predicted token) on A
  WORK/posB/NAME.npy        the same on B (competitive policies, uniform budgets)
  WORK/evict/NAME.csv       eviction logs on A (kvplan eval --eviction-log)

and prints Markdown: (1) where along the sequence the error falls, open loop against closed loop;
(2) which tokens each policy drops and what they carry; (3) candidate predictors, each fitted on the
calibration's configurations of A and scored on B as tools/validate_calibration.py scores the
shipped one; (4) the measurement noise of "the best policy at a memory", by resampling B's
sequences. NumPy and PyYAML (Debian's python3-numpy, python3-yaml)."""
import csv
import glob
import json
import math
import os
import struct
import sys

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from validate_calibration import spearman  # noqa: E402  (the same statistic as the shipped report)

COMPETITIVE = ["window", "h2o", "vatp", "vatp_mean", "tova", "snapkv"]
CLOSEST = ["window", "h2o", "vatp", "tova"]
BUDGETS = [16, 24, 32, 48, 64, 96, 128, 256]


def read_safetensors(path, names):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name in names:
            meta = header[name]
            b, e = meta["data_offsets"]
            f.seek(base + b)
            raw = f.read(e - b)
            dtype = {"F32": np.float32, "I32": np.int32}.get(meta["dtype"])
            if dtype is not None:
                out[name] = np.frombuffer(raw, dtype=dtype).reshape(meta["shape"])
            elif meta["dtype"] == "F16":
                out[name] = np.frombuffer(raw, dtype=np.float16).astype(np.float32).reshape(meta["shape"])
            else:  # BF16: the high half of a float32
                u = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
                out[name] = u.view(np.float32).reshape(meta["shape"])
        return out


def split_name(name):
    policy, allocation, budget = name.rsplit("-", 2)
    return policy, allocation, int(budget)


class Study:
    def __init__(self, val, work):
        self.val, self.work = val, work
        calib = yaml.safe_load(open(os.path.join(val, "calib.yaml")))
        m = calib["map"]
        self.w = np.array(m["layer_weights"], dtype=float)
        self.beta = float(m["nll_power"])
        self.offsets = m.get("policy_offsets", {}) or {}
        manifest = yaml.safe_load(open(os.path.join(val, "traceA", "manifest.yaml")))
        self.prompt = [s["prompt_len"] for s in manifest["sequences"]]
        self.length = [s["length"] for s in manifest["sequences"]]
        # Full-model NLL of each predicted token, [sequence][t]: t predicts token t + 1.
        self.ref_nll = [-read_safetensors(os.path.join(val, "traceA", s["file"]), ["ref_logprob"])["ref_logprob"]
                        for s in manifest["sequences"]]
        self.energy = {}
        for path in glob.glob(os.path.join(work, "energy", "*.npy")):
            self.energy[os.path.basename(path)[:-4]] = np.load(path).astype(np.float64)
        for path in glob.glob(os.path.join(work, "energy-mean", "vatp-uniform-*.npy")):
            b = split_name(os.path.basename(path)[:-4])[2]
            self.energy[f"vatp_mean-uniform-{b}"] = np.load(path).astype(np.float64)
        self.pos = {side: self.load_positions(side) for side in ("A", "B")}
        self.measured_b = {}
        with open(os.path.join(val, "measB", "plans.csv"), newline="") as f:
            for r in csv.DictReader(f):
                self.measured_b[r["plan"]] = (float(r["delta_nll"]), float(r["pred_delta_nll"]))
        self.measured_a = {}
        for path in glob.glob(os.path.join(val, "calA", "measured", "*.yaml")):
            policy, budget = os.path.basename(path)[:-5].rsplit("-", 1)
            self.measured_a[f"{policy}-uniform-{budget}"] = float(yaml.safe_load(open(path))["metrics"]["delta_nll"])
        for path in glob.glob(os.path.join(val, "calA-mean", "measured", "*.yaml")):
            budget = os.path.basename(path)[:-5].rsplit("-", 1)[1]
            self.measured_a[f"vatp_mean-uniform-{budget}"] = float(yaml.safe_load(open(path))["metrics"]["delta_nll"])
        # Per-step features of the first sequence shape: weighted energy W[s, m] = Σ_l w_l e[s, l, m].
        self.weighted = {n: np.einsum("l,slm->sm", self.w, np.nan_to_num(e)) for n, e in self.energy.items()}
        self.valid = {n: ~np.isnan(e[:, 0, :]) for n, e in self.energy.items()}
        steps = next(iter(self.energy.values())).shape[2]
        # Loss sensitivity of each step's prediction: 1 − p(next) under the full model (the first-order
        # change of −log p(next) under a small change of the logits scales with it).
        self.uncertain = np.zeros((len(self.prompt), steps))
        for s, (P, nll) in enumerate(zip(self.prompt, self.ref_nll)):
            k = min(steps, len(nll) - P)
            self.uncertain[s, :k] = 1.0 - np.exp(-nll[P:P + k])

    def load_positions(self, side):
        out = {}
        for path in glob.glob(os.path.join(self.work, f"pos{side}", "*.npy")):
            policy, budget = os.path.basename(path)[:-4].rsplit("-", 1)
            out[f"{policy}-uniform-{budget}"] = np.load(path).astype(np.float64)
        for path in glob.glob(os.path.join(self.work, f"pos{side}-mean", "vatp-*.npy")):
            budget = os.path.basename(path)[:-4].rsplit("-", 1)[1]
            out[f"vatp_mean-uniform-{budget}"] = np.load(path).astype(np.float64)
        return out

    # --- (1) where along the sequence -------------------------------------------------------------
    def along_sequence(self, budgets=(32, 48, 96), bins=7):
        out = ["### Where along the sequence the error falls (corpus A, uniform budgets)\n",
               "Each decode step's replay error is the calibration's weighted residual energy W = Σ_l w_l e_l at "
               "that step (the layer map's argument, per step); closed loop is the ΔNLL of the token the step "
               "predicts. Both are shares of their own total over 7 spans of 64 positions; the ratio column is "
               "closed loop's share over replay's (above 1: the span costs more loss than its replay energy says).\n"]
        for b in budgets:
            out.append(f"\n**{b} slots**\n")
            out.append("| policy | " + " | ".join(f"{64 + 64 * i}–{127 + 64 * i}" for i in range(bins)) +
                       " | Spearman per step (W, ΔNLL) |")
            out.append("|---|" + "---|" * (bins + 1))
            for p in COMPETITIVE:
                name = f"{p}-uniform-{b}"
                if name not in self.weighted or name not in self.pos["A"]:
                    continue
                W = self.weighted[name]
                D = self.pos["A"][name][:, 1:W.shape[1] + 1]  # step m predicts column m + 1
                ok = self.valid[name][:, :D.shape[1]] & ~np.isnan(D)
                W, D = np.where(ok, W[:, :D.shape[1]], 0), np.where(ok, D, 0)
                edges = np.linspace(0, W.shape[1], bins + 1).astype(int)
                ws = np.array([W[:, a:c].sum() for a, c in zip(edges[:-1], edges[1:])])
                ds = np.array([D[:, a:c].sum() for a, c in zip(edges[:-1], edges[1:])])
                ws, ds = ws / ws.sum(), ds / ds.sum()
                rho = spearman(W[ok].tolist(), D[ok].tolist())
                cells = [f"{100 * d:.0f}% / {100 * w:.0f}% ({d / w:.2f})" for d, w in zip(ds, ws)]
                out.append(f"| {p} | " + " | ".join(cells) + f" | {rho:.2f} |")
        # How loss-sensitive the steps are where each policy errs.
        out.append("\n**Where the steps fall by the full model's uncertainty (1 − p(next)), 48 slots.** Steps split "
                   "into quartiles of uncertainty; each cell: closed loop ΔNLL per unit of replay energy in that "
                   "quartile, relative to the policy's overall ratio.\n")
        out.append("| policy | most certain | 2nd | 3rd | least certain | energy share in the least certain |")
        out.append("|---|---|---|---|---|---|")
        for p in COMPETITIVE:
            name = f"{p}-uniform-48"
            if name not in self.weighted or name not in self.pos["A"]:
                continue
            W = self.weighted[name]
            D = self.pos["A"][name][:, 1:W.shape[1] + 1]
            U = self.uncertain[:, :D.shape[1]]
            ok = self.valid[name][:, :D.shape[1]] & ~np.isnan(D)
            q = np.quantile(U[ok], [0.25, 0.5, 0.75])
            ratio_all = D[ok].sum() / W[:, :D.shape[1]][ok].sum()
            cells = []
            for lo, hi in zip([-1, *q], [*q, 2]):
                sel = ok & (U > lo) & (U <= hi)
                cells.append(f"{D[sel].sum() / max(W[:, :D.shape[1]][sel].sum(), 1e-30) / ratio_all:.2f}")
            top = ok & (U > q[2])
            share = W[:, :D.shape[1]][top].sum() / W[:, :D.shape[1]][ok].sum()
            out.append(f"| {p} | " + " | ".join(cells) + f" | {100 * share:.0f}% |")
        return "\n".join(out) + "\n"

    # --- (2) which tokens each policy drops -------------------------------------------------------
    def dropped_tokens(self, budget=32, horizon=64):
        """Per eviction (sequence, step, layer, KV head, position) from the eviction logs: the token's age,
        its value's L1 norm, and the full-cache attention its group's query heads would have paid it
        over the next `horizon` queries (what the cut takes away), from A's trace."""
        logs = {}
        for p in COMPETITIVE:
            path = os.path.join(self.work, "evict", f"{p}-{budget}.csv")
            if os.path.exists(path):
                a = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1, 2, 3, 4), dtype=np.int64, ndmin=2)
                logs[p] = a
        if not logs:
            return ""
        manifest = yaml.safe_load(open(os.path.join(self.val, "traceA", "manifest.yaml")))
        H, KVH, hd = manifest["model"]["n_heads"], manifest["model"]["n_kv_heads"], manifest["model"]["head_dim"]
        L = manifest["model"]["n_layers"]
        g = H // KVH
        stats = {p: {"age": [], "mass": [], "vnorm": [], "lost": [], "layer": []} for p in logs}
        for s, seq in enumerate(manifest["sequences"]):
            path = os.path.join(self.val, "traceA", seq["file"])
            names = [f"layer.{l}.{t}" for l in range(L) for t in ("q", "k", "v")]
            t = read_safetensors(path, names)
            T = seq["length"]
            for l in range(L):
                q = t[f"layer.{l}.q"].reshape(T, H, hd)
                k = t[f"layer.{l}.k"].reshape(T, KVH, hd)
                v = t[f"layer.{l}.v"].reshape(T, KVH, hd)
                vnorm = np.abs(v).sum(axis=2)  # [T, KVH]
                for h in range(KVH):
                    # a[qh, t, j]: full-cache attention of query t to key j, causal; summed over the group.
                    logits = np.einsum("tgd,jd->gtj", q[:, h * g:(h + 1) * g, :], k[:, h, :]) / math.sqrt(hd)
                    logits += np.triu(np.full((T, T), -np.inf), 1)[None]
                    logits -= logits.max(axis=2, keepdims=True)
                    a = np.exp(logits)
                    a /= a.sum(axis=2, keepdims=True)
                    mass = a.sum(axis=0)  # [t, j], the group's query heads summed
                    cum = np.vstack([np.zeros((1, T)), np.cumsum(mass, axis=0)])  # cum[t] = Σ_{t' < t}
                    for p, log in logs.items():
                        sel = log[(log[:, 0] == s) & (log[:, 2] == l) & (log[:, 3] == h)]
                        if not len(sel):
                            continue
                        step, pos = sel[:, 1], sel[:, 4]
                        end = np.minimum(step + 1 + horizon, T)
                        m = (cum[end, pos] - cum[step + 1, pos]) / g
                        st = stats[p]
                        st["age"].append(step - pos)
                        st["mass"].append(m)
                        st["vnorm"].append(vnorm[pos, h])
                        st["lost"].append(m * vnorm[pos, h])
                        st["layer"].append(np.full(len(sel), l))
        out = [f"### Which tokens each policy drops, and what they carry (corpus A, {budget} slots)\n",
               f"From `kvplan eval --eviction-log` on A and A's full-cache trace. Per eviction: the token's age "
               f"(step − position), its value's L1 norm, and the full-cache attention its KV head's query heads "
               f"(mean over the group) would have paid it over the next {horizon} queries — the mass the cut "
               f"takes away; 'lost' is that mass times the value norm, the size of what leaves the output. "
               f"Evictions counted over all layers and heads; 'old' is the share of evictions of tokens older "
               f"than 256 positions.\n",
               "| policy | evictions | median age | old | mean future mass | tokens with mass > 0.5 | "
               "mean value L1 | mean lost | lost in layers 2–4 |",
               "|---|---|---|---|---|---|---|---|---|"]
        for p in logs:
            st = {k: np.concatenate(v) if v else np.zeros(0) for k, v in stats[p].items()}
            if not len(st["age"]):
                continue
            late = st["lost"][st["layer"] >= 2].sum() / max(st["lost"].sum(), 1e-30)
            out.append(f"| {p} | {len(st['age'])} | {np.median(st['age']):.0f} | {100 * (st['age'] > 256).mean():.0f}% | "
                       f"{st['mass'].mean():.4f} | {100 * (st['mass'] > 0.5).mean():.2f}% | {st['vnorm'].mean():.3f} | "
                       f"{st['lost'].mean():.4f} | {100 * late:.0f}% |")
        return "\n".join(out) + "\n"

    # --- (3) candidate predictors -----------------------------------------------------------------
    def features(self, name):
        W, ok = self.weighted[name], self.valid[name]
        return W[ok], self.uncertain[:, :W.shape[1]][ok]

    def candidates(self):
        """Each: (name, description, uses per-policy calibration runs, fit(train) -> predict(name))."""
        beta = self.beta

        def layer_map(n):
            return max(self.features(n)[0].mean(), 1e-30) ** beta

        def policy_of(n):
            return split_name(n)[0]

        def c0(train):
            return layer_map

        def c1(train):
            return lambda n: layer_map(n) * math.exp(self.offsets.get(policy_of(n), 0.0))

        def fit_power(train, stat):
            """κ · stat(n, γ): γ on a grid, κ the mean log residual; least squares in log ΔNLL."""
            best = None
            for gamma in np.arange(0.10, 2.01, 0.01):
                x = np.array([math.log(max(stat(n, gamma), 1e-30)) for n in train])
                y = np.array([math.log(self.measured_a[n]) for n in train])
                k = (y - x).mean()
                err = ((y - x - k) ** 2).sum()
                if best is None or err < best[0]:
                    best = (err, gamma, k)
            _, gamma, k = best
            return lambda n: math.exp(k) * stat(n, gamma), gamma

        def c2(train):
            f, gamma = fit_power(train, lambda n, g: (self.features(n)[0] ** g).mean())
            self.fitted["per-step power"] = f"γ = {gamma:.2f}"
            return f

        def c3(train):
            f, gamma = fit_power(train, lambda n, g: (np.prod(self.features(n), axis=0)).mean() ** g)
            self.fitted["uncertainty-weighted"] = f"exponent {gamma:.2f}"
            return f

        def c4(train):
            f, gamma = fit_power(train, lambda n, g: (np.prod(self.features(n), axis=0) ** g).mean())
            self.fitted["uncertainty-weighted, per-step power"] = f"γ = {gamma:.2f}"
            return f

        return [("layer map", "(Σ_l w_l E_l)^β, E_l the mean energy (calib.yaml's map, no offsets)", False, c0),
                ("layer map + policy offsets", "× exp(offset of the policy): what kvplan ships", True, c1),
                ("per-step power", "κ · mean over steps of (Σ_l w_l e_l)^γ: a step's loss grows as a power of its own "
                                   "energy, so concentrated error costs less than its mean when γ < 1", False, c2),
                ("uncertainty-weighted", "κ · (mean over steps of (1 − p_full(next)) · Σ_l w_l e_l)^γ: each step's "
                                         "energy weighted by how sensitive its prediction is", False, c3),
                ("uncertainty-weighted, per-step power", "κ · mean over steps of ((1 − p) · Σ_l w_l e_l)^γ", False, c4)]

    def score(self, predict):
        names = [n for n in self.measured_b if n in self.energy]
        pred = {n: predict(n) for n in names}
        meas = {n: self.measured_b[n][0] for n in names}
        spread = max(meas.values()) - min(meas.values())
        row = {"n": len(names),
               "rho_all": spearman([pred[n] for n in names], [meas[n] for n in names]),
               "mae": np.mean([abs(pred[n] - meas[n]) for n in names]) / spread}
        for scope, policies in (("competitive", COMPETITIVE), ("closest", CLOSEST)):
            rhos, hits = [], 0
            for b in BUDGETS:
                sel = [f"{p}-uniform-{b}" for p in policies if f"{p}-uniform-{b}" in pred]
                if len(sel) < 3:
                    continue
                rhos.append(spearman([pred[n] for n in sel], [meas[n] for n in sel]))
                hits += min(sel, key=pred.get) == min(sel, key=meas.get)
            row[f"rho_{scope}"] = float(np.mean(rhos))
            row[f"hits_{scope}"] = f"{hits} of {len(rhos)}"
        return row

    def predictors(self):
        self.fitted = {}
        train = sorted(n for n in self.measured_a if n in self.energy and self.measured_a[n] > 1e-4)
        out = ["### Candidate predictors, scored on held-out B\n",
               f"Each is fitted on the calibration's {len(train)} uniform configurations measured on A (the layer "
               f"weights w_l and power β are calib.yaml's, from the same runs and the one-layer probes) and predicts "
               f"every grid configuration from A's trace; scored against B as tools/validate_calibration.py scores "
               f"the shipped predictor (competitive: window, h2o, vatp, vatp_mean, tova, snapkv at each of 8 "
               f"memories; closest: window, h2o, vatp, tova).\n",
               "| predictor | needs each policy measured | Spearman, all | ΔNLL error / spread | competitive Spearman | "
               "closest four | best competitive = measured | best of closest four |",
               "|---|---|---|---|---|---|---|---|"]
        notes = []
        for name, desc, per_policy, fit in self.candidates():
            r = self.score(fit(train))
            out.append(f"| {name} | {'yes' if per_policy else 'no'} | {r['rho_all']:.3f} | {100 * r['mae']:.1f}% | "
                       f"{r['rho_competitive']:.3f} | {r['rho_closest']:.3f} | {r['hits_competitive']} | "
                       f"{r['hits_closest']} |")
            notes.append(f"- **{name}**: {desc}" + (f" (fitted: {self.fitted[name]})" if name in self.fitted else ""))
        return "\n".join(out) + "\n\n" + "\n".join(notes) + "\n"

    # --- (4) the measurement's own noise ----------------------------------------------------------
    def noise(self, draws=2000, seed=1):
        rng = np.random.default_rng(seed)
        out = ["### How sure is the measured best? (B's sequences resampled)\n",
               f"ΔNLL per sequence from `eval --positions` on B; {draws} bootstrap resamples of the 64 sequences. "
               "For each memory: the measured best of the competitive six and of the closest four, and how often "
               "a resample names the same one.\n",
               "| budget | best competitive (share of resamples) | runner-up, gap | best of closest four (share) |",
               "|---|---|---|---|"]
        for b in BUDGETS:
            cells = []
            for policies in (COMPETITIVE, CLOSEST):
                names = [f"{p}-uniform-{b}" for p in policies if f"{p}-uniform-{b}" in self.pos["B"]]
                if len(names) < 2:
                    cells.append("—")
                    continue
                per_seq = np.array([np.nanmean(self.pos["B"][n], axis=1) for n in names])  # [config, seq]
                S = per_seq.shape[1]
                idx = rng.integers(0, S, size=(draws, S))
                means = per_seq[:, idx].mean(axis=2)  # [config, draw]
                winners = means.argmin(axis=0)
                full = per_seq.mean(axis=1)
                best = int(full.argmin())
                order = np.argsort(full)
                share = (winners == best).mean()
                cells.append((split_name(names[best])[0], share, split_name(names[order[1]])[0], full[order[1]] - full[best]))
            c, k = cells
            if c == "—":
                continue
            out.append(f"| {b} | {c[0]} ({100 * c[1]:.0f}%) | {c[2]}, {c[3]:.4f} | {k[0]} ({100 * k[1]:.0f}%) |")
        return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: position_study.py VALIDATE_DIR STUDY_DIR")
    study = Study(sys.argv[1], sys.argv[2])
    parts = [study.along_sequence(), study.dropped_tokens(), study.predictors(), study.noise()]
    print("\n".join(p for p in parts if p))


if __name__ == "__main__":
    main()
