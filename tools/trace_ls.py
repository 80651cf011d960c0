#!/usr/bin/env python3
"""List the tensors of safetensors files (kvplan traces are plain safetensors).

Standard library only: proof that a trace opens with nothing but Python.

    tools/trace_ls.py TRACE_DIR/seq-00000.safetensors [more files or trace directories]
    tools/trace_ls.py --json TRACE_DIR

For each file: every tensor's name, dtype, shape and byte range, and the __metadata__ if any.
With --stats, also min/mean/max of F32 and I32 tensors (F16 is decoded with struct's 'e').
Exits 1 with a one-line message on a malformed file.
"""
import argparse
import json
import os
import struct
import sys

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
               "U8": 1, "BOOL": 1}
STRUCT_CODE = {"F32": "f", "F16": "e", "I32": "i", "F64": "d", "I64": "q"}


def read_header(path):
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        size = os.path.getsize(path)
        if n > size - 8:
            raise ValueError(f"{path}: header length {n} runs past the end of the {size}-byte file")
        header = json.loads(f.read(n).decode("utf-8"))
    data_start = 8 + n
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        count = 1
        for d in shape:
            count *= d
        if dtype not in DTYPE_BYTES or end - begin != count * DTYPE_BYTES[dtype]:
            raise ValueError(f"{path}: tensor {name}: {dtype} {shape} does not fit bytes {begin}..{end}")
        if data_start + end > size:
            raise ValueError(f"{path}: tensor {name}: bytes {begin}..{end} run past the end of the file")
        tensors.append({"name": name, "dtype": dtype, "shape": shape, "begin": begin, "end": end})
    tensors.sort(key=lambda t: t["begin"])
    return header.get("__metadata__", {}), tensors, data_start


def tensor_stats(path, data_start, t):
    code = STRUCT_CODE.get(t["dtype"])
    if code is None or t["end"] == t["begin"]:
        return None
    with open(path, "rb") as f:
        f.seek(data_start + t["begin"])
        raw = f.read(t["end"] - t["begin"])
    n = len(raw) // struct.calcsize(code)
    values = struct.unpack(f"<{n}{code}", raw)
    return {"min": min(values), "mean": sum(values) / n, "max": max(values)}


def files_of(target):
    if os.path.isdir(target):
        return sorted(os.path.join(target, f) for f in os.listdir(target) if f.endswith(".safetensors"))
    return [target]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="safetensors files or trace directories")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--stats", action="store_true", help="min/mean/max of F32, F16, I32 tensors")
    args = parser.parse_args()
    out = []
    try:
        for target in args.paths:
            for path in files_of(target):
                metadata, tensors, data_start = read_header(path)
                if args.stats:
                    for t in tensors:
                        t["stats"] = tensor_stats(path, data_start, t)
                out.append({"file": path, "metadata": metadata, "tensors": tensors})
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        print(f"trace_ls: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for f in out:
        print(f"{f['file']}: {len(f['tensors'])} tensors")
        for t in f["tensors"]:
            shape = "[" + ", ".join(str(d) for d in t["shape"]) + "]"
            line = f"  {t['name']:<24} {t['dtype']:<4} {shape:<16} bytes {t['begin']}..{t['end']}"
            if t.get("stats"):
                s = t["stats"]
                line += f"  min {s['min']:.4g} mean {s['mean']:.4g} max {s['max']:.4g}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
