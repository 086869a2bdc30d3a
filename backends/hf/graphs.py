"""Decode steps replayed as CUDA graphs over a static KV cache (what vLLM does unless
`--enforce-eager`).

Batch 1 decoding of a 7B model in eager transformers is bound by the CPU launching ~1,000 small
kernels per token (30 ms a token on an H100 where the weights take 4.5 ms to read). A CUDA graph
launches them all at once. Graphs need fixed shapes and fixed addresses, so:

- the KV cache lives in one preallocated buffer per layer, `[max_batch, kv_heads, max_cols,
  head_dim]`; the running batch's `DynamicCache` layers are views of its top-left corner
  (`Batch` keeps the layout it always had: rows left-padded to one length, a mask per row).
  After anything that rebuilt the cache (a prefill joining, rows leaving, an eager step), its
  tensors are copied back into the buffer ("homing") before the next graphed step;
- one graph per (batch bucket, column bucket): rows are padded up to the next bucket size
  (padding rows compute garbage that nobody reads), columns to the next multiple of
  `COL_STEP` (attention over masked-out columns costs little next to reading the weights);
- every step writes its new K/V at the same columns for all rows (the batch's new last
  columns), so one `index_copy_` with column indices held in a static tensor serves every row;
- a step reads `width` new tokens per row (1 for plain decoding; with speculative decoding,
  k + 1 when the target verifies `[last, d1 .. dk]`, and 2 when the draft reads the token it is
  behind by with `last`), causal among themselves: graphs are keyed by width too;
- the step itself is written out for the Llama layout (Llama, Mistral without a sliding window,
  Qwen2), with the model's own modules (norms, projections, MLP, rotary embedding) and
  `scaled_dot_product_attention`; other architectures decode eagerly (`unsupported()` says why).

Prefill stays eager (it is compute-bound and its shapes vary). On a CPU, `capture=False` runs the
same static-buffer step without graphs: that is how the tests check it gives the eager step's
tokens.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger("hf.graphs")

COL_STEP = 128  # column buckets: multiples of this (256: 2,139 instead of 2,279 tok/s at 32 streams on the H100)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
SUPPORTED = ("llama", "mistral", "qwen2")


def unsupported(model) -> str | None:
    """Why this model cannot take the static/graphed decode step (None: it can)."""
    cfg = model.config
    kind = getattr(cfg, "model_type", "?")
    if kind not in SUPPORTED:
        return f"architecture {kind} (graphed decoding covers {', '.join(SUPPORTED)})"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", kind == "mistral"):
        return "a sliding-window model"
    bits = _bnb_bits(model)
    if bits == 8:
        # LLM.int8() splits outlier columns out of every activation: shapes that depend on the
        # data, read back on the CPU, which a graph cannot hold
        return "an 8-bit bitsandbytes model (LLM.int8() picks outlier columns per call)"
    if bits not in (None, 4):
        return "a quantized model of an unknown kind"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "an unexpected module layout"
    attn = inner.layers[0].self_attn
    if any(hasattr(attn, n) for n in ("q_norm", "k_norm")):
        return "per-head q/k norms"
    return None


class StaticDecoder:
    def __init__(self, model, *, max_batch: int, max_cols: int, capture: bool, compile: bool | None = None,
                 max_width: int = 1, compile_backend: str = "inductor"):  # fmt: skip
        """`compile` (default: when capturing) fuses elementwise ops with torch.compile's
        `compile_backend` ("eager" traces without generating code: tests count compilations)."""
        self.model = model
        inner = model.model
        self.layers = list(inner.layers[: model.config.num_hidden_layers])
        attn = self.layers[0].self_attn
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.kv_heads = model.config.num_key_value_heads
        self.head_dim = attn.head_dim
        self.gqa = model.config.num_attention_heads != self.kv_heads
        self.max_batch = max_batch
        self.max_cols = max_cols
        self.max_width = max_width
        self.capture = capture
        shape = (max_batch, self.kv_heads, max_cols, self.head_dim)
        self.k = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        self.v = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers]
        # static inputs (graphs read them at fixed addresses)
        self.ids = torch.zeros((max_batch, max_width), dtype=torch.long, device=self.device)
        self.pos = torch.zeros((max_batch, max_width), dtype=torch.long, device=self.device)
        self.cols = torch.zeros(max_width, dtype=torch.long, device=self.device)
        self.mask = torch.zeros((max_batch, max_width, max_cols), dtype=torch.bool, device=self.device)
        # static output: every graph copies its logits here, so a graph's own result is a
        # temporary its memory pool reuses (kept per graph, they would add up to buckets x width)
        vocab = model.get_output_embeddings().weight.shape[0]
        self.out = torch.empty((max_batch, max_width, vocab), dtype=self.dtype, device=self.device)
        self.graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self.steps = 0
        self.steps_by_width: dict[int, int] = {}  # tokens a row per step (speculating: > 1)
        self.eager_steps = 0  # steps the batch did not fit (fell back to the eager step)
        # the projections of one input as one matrix product each (bitsandbytes 4-bit weights are
        # packed blocks with their own scales, not matrices to concatenate: its layers stay apart)
        self.fused = _bnb_bits(model) is None
        self.qkv, self.gate_up = [], []
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            self.qkv.append(_fuse(a.q_proj, a.k_proj, a.v_proj) if self.fused else None)
            self.gate_up.append(_fuse(m.gate_proj, m.up_proj) if self.fused else None)
        self.q_out = self.layers[0].self_attn.q_proj.out_features
        self.kv_out = self.layers[0].self_attn.k_proj.out_features
        self.inter = self.layers[0].mlp.up_proj.out_features
        self.act = self.layers[0].mlp.act_fn
        self.compiled = None
        self.failed: str | None = None  # set when a step failed: the engine decodes eagerly since
        self.compile_backend = compile_backend
        if capture if compile is None else compile:
            self._compile()

    @classmethod
    def for_model(cls, model, *, max_batch: int, max_len: int, device: str, capture: bool,
                  memory_fraction: float = 0.4, max_width: int = 1):  # fmt: skip
        """A decoder sized to the memory free now (`memory_fraction` of it for the KV buffer),
        or (None, why not)."""
        why = unsupported(model)
        if why:
            return None, why
        cfg = model.config
        p = next(model.parameters())
        per_col = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * model.model.layers[0].self_attn.head_dim
        per_col *= p.element_size() * max_batch
        if device == "cuda":
            free, _ = torch.cuda.mem_get_info(p.device)
        else:
            free = 1 << 30  # the CPU static path exists for tests: a small buffer
        # the logits buffer every graph writes into ([rows, width, vocab]) comes out of that share
        vocab = model.get_output_embeddings().weight.shape[0]
        out_bytes = max_batch * max_width * vocab * p.element_size()
        cols = min(max_len, int((free * memory_fraction - out_bytes) // per_col))
        cols -= cols % COL_STEP
        if cols < COL_STEP:
            return None, f"no room for a {COL_STEP}-column KV buffer of {max_batch} rows"
        return cls(model, max_batch=max_batch, max_cols=cols, capture=capture, max_width=max_width), None

    def _compile(self) -> None:
        """Fuse the small elementwise ops of a layer (norms with the residual adds before them,
        rotary, SiLU-and-multiply) with torch.compile: each is a handful of kernels that take
        longer to run one after another than the matrix products around them at batch 1. Compiled
        here at start-up for every specialization a step can hit (torch.compile specializes
        dimensions of size 1: a batch of 1 or 2+ rows, times 1 or 2+ tokens a row when
        speculating), so no request waits for the compiler (it took 7.5 s, mid-run, on the H100);
        without a working compiler (no triton), they stay eager."""
        import time

        t = time.perf_counter()
        try:
            fns = {n: torch.compile(f, dynamic=True, backend=self.compile_backend) for n, f in _ELEMENTWISE.items()}
            widths = (1, 2) if self.max_width > 1 else (1,)
            # one cache per function, shared by every decoder in the process (a draft's shapes
            # add their own): room for them all, not torch's default of 8
            cfg = torch._dynamo.config
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(cfg, name):
                    setattr(cfg, name, max(getattr(cfg, name), 64))
            with torch.inference_mode():
                for nb in (1, 2) if self.max_batch > 1 else (1,):  # the batch dimension compiles as dynamic
                    for w in widths:
                        self.mask[:nb, :w, 0] = True
                        self.compiled = fns
                        self._forward(nb, COL_STEP, w)
            self.mask.fill_(False)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            log.info("compiled the decode step's elementwise ops in %.0f s", time.perf_counter() - t)
        except Exception as exc:  # noqa: BLE001 (any compiler failure: decode without it)
            self.compiled = None
            log.warning("torch.compile failed (%s: %s); the decode step's elementwise ops stay eager",
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")  # fmt: skip

    def info(self) -> dict:
        return {
            "enabled": self.failed is None,
            "failed": self.failed,
            "cuda_graphs": self.capture,
            "compiled": self.compiled is not None,
            "attention": "sdpa",  # the step's own, whatever --attn serves prefill and eager steps with
            "max_batch": self.max_batch,
            "max_cols": self.max_cols,
            "max_width": self.max_width,
            "graphs": [f"{b}x{c}" + (f"x{w}" if w > 1 else "") for b, c, w in sorted(self.graphs)],
            "buffer_bytes": 2 * sum(t.numel() * t.element_size() for t in self.k),
            "steps": self.steps,
            "steps_by_width": dict(sorted(self.steps_by_width.items())),
            "eager_steps": self.eager_steps,
        }

    # --- the scheduler's side ---------------------------------------------------------------------
    def fits(self, rows: int, cols: int, width: int = 1) -> bool:
        return rows <= self.max_batch and cols <= self.max_cols and width <= self.max_width

    def step(self, b) -> torch.Tensor:
        """One decode step of batch `b` (its mask already has the new column): writes the new
        K/V into the buffer, leaves `b.cache` as views of it, returns logits [rows, vocab]."""
        logits = self.run(b.cache, b.homed, b.last[:, None], b.positions[:, None], b.mask)
        b.homed = True
        return logits[:, -1]

    def run(self, cache, homed: bool, ids: torch.Tensor, positions: torch.Tensor,
            mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """`ids`/`positions` [rows, width]: the new tokens of each row, which take the last
        `width` columns of `mask` [rows, cols] (1 where a row's column is a real token). `cache`
        (a DynamicCache of cols - width columns, already views of the buffer when `homed`) comes
        back as views of the buffer's cols columns. Returns logits [rows, width, vocab]."""
        rows, width = ids.shape
        cols = mask.shape[1]
        if not homed:
            self._home(cache, rows, cols - width)
        nb = next(x for x in BATCH_BUCKETS + (self.max_batch,) if x >= rows and x <= self.max_batch)
        nc = min(-(-cols // COL_STEP) * COL_STEP, self.max_cols)
        self.ids[:rows, :width] = ids
        self.pos[:rows, :width] = positions
        dev = self.device
        if width == 1:  # plain decoding: the step the engine takes most, kept to few kernels
            self.cols[:1].fill_(cols - 1)
            self.mask[:rows, 0, :cols] = mask.bool()
        else:  # new token j of a row sees the row's columns up to its own (cols - width + j)
            new = torch.arange(cols - width, cols, device=dev)
            self.cols[:width] = new
            self.mask[:rows, :width, :cols] = mask.bool()[:, None, :] & (torch.arange(cols, device=dev) <= new[:, None])
        self.mask[:rows, :width, cols:nc] = False
        if nb > rows:  # padding rows: a valid column keeps their softmax finite
            self.ids[rows:nb, :width] = 0
            self.pos[rows:nb, :width] = 0
            self.mask[rows:nb, :width, :nc] = False
            self.mask[rows:nb, :width, 0] = True
        if self.capture:
            entry = self.graphs.get((nb, nc, width))
            if entry is None:
                entry = self.graphs[(nb, nc, width)] = self._capture(nb, nc, width)
            entry[0].replay()
            logits = entry[1][:rows]
        else:
            logits = self._forward(nb, nc, width)[:rows]
        self.steps += 1
        self.steps_by_width[width] = self.steps_by_width.get(width, 0) + 1
        for layer, k, v in zip(cache.layers, self.k, self.v):
            layer.keys, layer.values = k[:rows, :, :cols], v[:rows, :, :cols]
        return logits

    def _home(self, cache, rows: int, cols: int) -> None:
        for layer, k, v in zip(cache.layers, self.k, self.v):
            k[:rows, :, :cols].copy_(layer.keys)
            v[:rows, :, :cols].copy_(layer.values)

    def _capture(self, nb: int, nc: int, width: int):
        # warm-up on a side stream (cuBLAS/cuDNN workspaces), as torch's docs do; it computes
        # exactly this step (same inputs, same columns), so it disturbs nothing
        s = torch.cuda.Stream(self.device)
        s.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(s):
            self._forward(nb, nc, width)
        torch.cuda.current_stream(self.device).wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._forward(nb, nc, width)
        log.info("captured a decode graph for %d rows x %d columns x %d tokens (%d so far)",
                 nb, nc, width, len(self.graphs) + 1)  # fmt: skip
        return graph, out

    def _forward(self, nb: int, nc: int, w: int) -> torch.Tensor:
        inner = self.model.model
        fns = self.compiled or _ELEMENTWISE
        rms, add_rms, rope, glu = (fns[n] for n in ("rms", "add_rms", "rope", "glu"))
        ids, pos, col = self.ids[:nb, :w], self.pos[:nb, :w], self.cols[:w]
        # SDPA turns a bool mask into an additive one in every call (kernels in every layer):
        # turned once a step here (0 or -inf, in the query's dtype: the buffer's), from the static
        # mask, so a replay reads this step's
        keep = self.mask[:nb, None, :w, :nc]
        mask = torch.full(keep.shape, float("-inf"), dtype=self.dtype, device=self.device).masked_fill_(keep, 0.0)
        h = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(h, pos)
        cos, sin = cos[:, None], sin[:, None]  # [nb, 1, w, head_dim]
        hd, nq, nkv = self.head_dim, self.q_out, self.kv_out
        # each residual add goes with the norm that reads its sum (one kernel when compiled); after
        # a layer's MLP that is the next layer's input norm, after the last layer's the final one
        first = self.layers[0].input_layernorm
        x = rms(h, first.weight, first.variance_epsilon)
        norms = [layer.input_layernorm for layer in self.layers[1:]] + [inner.norm]
        for layer, kbuf, vbuf, qkv_w, gu_w, norm in zip(self.layers, self.k, self.v, self.qkv, self.gate_up, norms):
            attn = layer.self_attn
            if qkv_w is not None:
                qkv = F.linear(x, *qkv_w)
                q, k, v = qkv[..., :nq], qkv[..., nq : nq + nkv], qkv[..., nq + nkv :]
            else:
                q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
            q = q.reshape(nb, w, -1, hd).transpose(1, 2)
            k = k.reshape(nb, w, -1, hd).transpose(1, 2)
            v = v.reshape(nb, w, -1, hd).transpose(1, 2)
            q, k = rope(q, k, cos, sin)
            kbuf[:nb].index_copy_(2, col, k)
            vbuf[:nb].index_copy_(2, col, v)
            o = F.scaled_dot_product_attention(q, kbuf[:nb, :, :nc], vbuf[:nb, :, :nc], attn_mask=mask,
                                               scale=attn.scaling, enable_gqa=self.gqa)  # fmt: skip
            ln2 = layer.post_attention_layernorm
            h, x = add_rms(h, attn.o_proj(o.transpose(1, 2).reshape(nb, w, -1)), ln2.weight, ln2.variance_epsilon)
            if gu_w is not None:
                gu = glu(F.linear(x, *gu_w), self.inter, self.act)
            else:
                gu = self.act(layer.mlp.gate_proj(x)) * layer.mlp.up_proj(x)
            h, x = add_rms(h, layer.mlp.down_proj(gu), norm.weight, norm.variance_epsilon)
        out = self.out.view(-1)[: nb * w * self.out.shape[-1]].view(nb, w, -1)  # contiguous
        out.copy_(self.model.lm_head(x))
        return out  # [nb, w, vocab]


def _bnb_bits(model) -> int | None:
    """4 or 8 for a bitsandbytes model, None for one not quantized (0: quantized otherwise)."""
    q = getattr(model.config, "quantization_config", None)
    if q is None and not getattr(model, "is_quantized", False):
        return None
    get = q.get if isinstance(q, dict) else lambda n, d=None: getattr(q, n, d)
    if get("load_in_4bit", False):
        return 4
    if get("load_in_8bit", False):
        return 8
    return 0


def _fuse(*linears):
    """One (weight, bias) for several Linear layers of the same input, whose own weights become
    views of it (no second copy in memory; prefill still calls the modules)."""
    weight = torch.cat([lin.weight.data for lin in linears])
    biases = [lin.bias for lin in linears]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat([b.data if b is not None else weight.new_zeros(lin.out_features)
                          for b, lin in zip(biases, linears)])  # fmt: skip
    start = 0
    for lin in linears:
        n = lin.out_features
        lin.weight = torch.nn.Parameter(weight[start : start + n], requires_grad=False)
        if lin.bias is not None:
            lin.bias = torch.nn.Parameter(bias[start : start + n], requires_grad=False)
        start += n
    return weight, bias


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm's arithmetic (float32 inside, then the input dtype, then the weight)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _add_rms(h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """The residual add and the norm that reads its sum: (h + delta, `_rms` of it)."""
    h = h + delta
    return h, _rms(h, weight, eps)


def _rope(q, k, cos, sin):
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _glu(gu: torch.Tensor, inter: int, act) -> torch.Tensor:
    return act(gu[..., :inter]) * gu[..., inter:]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


# what `_compile` fuses, each into one kernel, and what runs without it
_ELEMENTWISE = {"rms": _rms, "add_rms": _add_rms, "rope": _rope, "glu": _glu}
