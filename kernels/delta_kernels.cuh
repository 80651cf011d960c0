// DELTA's page selection on the device (planner/policy/delta.h), written once for nvcc and the
// emulation; included by kernels/decoder_kernels.cuh. The sparse layers' masks and the selection
// layers' maxima are decode_attention_body's (DeltaPages).

namespace kvp::KVP_KERNEL_NS {

// DELTA's selection for one row (block): each position's largest head_max over the row's entries
// (KV heads in order, each slot's position once per head), page scores summed in position order
// (the CPU's choose_pages order), then each page chosen when forced (the sinks' pages, the last
// `last`) or ranked below `pages` among the others (higher score first, the newer page on ties).
KVP_GLOBAL void delta_select_kernel(const int32_t* pos, const int64_t* offset, const int32_t* n_used,
                                    const float* head_max, int head_max_stride, const int32_t* newest, int n_kv_heads,
                                    int pages, int page_size, int last, int sinks, float* pos_weight, int pos_stride,
                                    float* page_score, uint8_t* chosen, int chosen_stride) {
  const int row = static_cast<int>(blockIdx.x), tid = static_cast<int>(threadIdx.x), nt = static_cast<int>(blockDim.x);
  const int e0 = row * n_kv_heads;
  const int newest_pos = newest[e0];
  float* pw = pos_weight + static_cast<int64_t>(row) * pos_stride;
  float* ps = page_score + static_cast<int64_t>(row) * chosen_stride;
  uint8_t* ch = chosen + static_cast<int64_t>(row) * chosen_stride;
  for (int p = tid; p < newest_pos; p += nt) pw[p] = 0;
  gpu::sync_threads();
  for (int h = 0; h < n_kv_heads; ++h) {  // a head's slots hold distinct positions: no two threads meet
    const int e = e0 + h;
    const float* hm = head_max + static_cast<int64_t>(e) * head_max_stride;
    for (int j = tid; j < n_used[e]; j += nt) {
      const int p = pos[offset[e] + j];
      if (p < newest_pos) pw[p] = fmaxf(pw[p], hm[j]);
    }
    gpu::sync_threads();
  }
  const int n_pages = newest_pos / page_size + 1;
  for (int page = tid; page < n_pages; page += nt) {
    float s = 0;
    const int end = (page + 1) * page_size < newest_pos ? (page + 1) * page_size : newest_pos;
    for (int p = page * page_size; p < end; ++p) s += pw[p];
    ps[page] = s;
  }
  gpu::sync_threads();
  const int sink_pages = sinks > page_size ? (sinks + page_size - 1) / page_size : 1;
  auto forced = [&](int page) { return page < sink_pages || page >= n_pages - last; };
  for (int page = tid; page < n_pages; page += nt) {
    int take = 1;
    if (!forced(page)) {
      int rank = 0;
      for (int o = 0; o < n_pages; ++o) {
        if (o == page || forced(o)) continue;
        if (ps[o] > ps[page] || (ps[o] == ps[page] && o > page)) ++rank;
      }
      take = rank < pages ? 1 : 0;
    }
    ch[page] = static_cast<uint8_t>(take);
  }
  gpu::sync_threads();
}

}  // namespace kvp::KVP_KERNEL_NS
