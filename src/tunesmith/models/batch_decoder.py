"""A decode step for many sequences at once, each at its own length, each with its own LoRA adapter.

transformers' ``generate`` runs one batch from start to end: a sequence cannot join it after it started,
and one that finished keeps its row until the longest is done. Serving needs rows that come and go at every
step (continuous batching), so this module runs the decoder itself, with the model's own modules (norms,
projections, rotary embedding, MLP), over a key/value cache of *slots*:

* slot ``s`` holds one sequence's keys and values at columns ``0 .. length[s]-1``; a step writes each row's
  new token at that row's own column, and a mask hides the columns past each row's length. A finished
  sequence's slot is refilled by moving the last slot into it (one row's copy), so the active rows are always
  slots ``0 .. rows-1`` and attention reads a view of the cache, never a gathered copy.
* ``prefill`` runs one prompt (or the rest of it after a reused prefix) into one slot, exactly the
  computation the sequence would get alone.
* LoRA adapters of versions that share this base are applied per row in the same step, as a batched matmul
  over each row's adapter (rows without one use a zero adapter): the base weights are read once for the whole
  batch, whatever mix of versions it serves (models.adapter_bank holds the adapters).

Only the decoder families whose layers are the Llama layout (pre-norm, rotary attention with grouped
key/value heads, gated MLP; biases as the checkpoint has them) run here: ``supports`` says which. Others are
served by ``generate`` one request at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from tunesmith.models.adapter_bank import AdapterBank, RowAdapters
from tunesmith.models.packed_linear import PackedLinears
from tunesmith.models.parts import causal_lm

# Decoder families with Llama's layer layout and no sliding window, soft-capping or per-head norms.
LLAMA_LAYOUT = {"llama", "mistral", "qwen2"}


def supports(model) -> bool:
    """Whether ``model`` (a plain transformers causal LM) can be decoded here."""
    config = causal_lm(model).config
    return (
        config.model_type in LLAMA_LAYOUT
        and getattr(config, "sliding_window", None) is None
        and not getattr(config, "use_sliding_window", False)
        and not getattr(config, "mlp_bias", False)
    )


class BatchDecoder:
    """The decoder of one base model and a slot cache of ``slots`` sequences of up to ``room`` tokens
    (room grows by doubling when a sequence goes past it)."""

    def __init__(self, model, bank: AdapterBank | None = None, room: int = 256):
        lm = causal_lm(model)
        if not supports(lm):
            raise ValueError(f"a {lm.config.model_type} model is not decoded by BatchDecoder")
        self.lm = lm
        self.bank = bank or AdapterBank(lm)
        self.linears = PackedLinears([m for m in lm.modules() if isinstance(m, torch.nn.Linear)])
        config = lm.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        parameter = next(lm.parameters())
        self.dtype, self.device = parameter.dtype, parameter.device
        layers = len(lm.model.layers)
        self.keys = [self._empty(0, room) for _ in range(layers)]  # per layer [slots, kv_heads, room, head_dim]
        self.values = [self._empty(0, room) for _ in range(layers)]
        self.lengths: list[int] = []  # per slot, the columns in use

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def _empty(self, slots: int, room: int) -> torch.Tensor:
        return torch.zeros(slots, self.kv_heads, room, self.head_dim, dtype=self.dtype, device=self.device)

    # ---- slots -------------------------------------------------------------------------------------------

    def add_slot(self) -> int:
        """A new slot (the last), empty."""
        slots, room = self.keys[0].shape[0], self.keys[0].shape[2]
        if self.rows == slots:  # grow the slot count by half again (at least 4): amortised copies
            more = max(4, slots // 2)
            self.keys = [torch.cat([k, self._empty(more, room)]) for k in self.keys]
            self.values = [torch.cat([v, self._empty(more, room)]) for v in self.values]
        self.lengths.append(0)
        return self.rows - 1

    def remove_slot(self, slot: int) -> int | None:
        """Frees ``slot`` by moving the last slot into it; returns the slot that moved (now ``slot``), if any."""
        last = self.rows - 1
        if slot != last:
            used = self.lengths[last]
            for cache in (*self.keys, *self.values):
                cache[slot, :, :used] = cache[last, :, :used]
            self.lengths[slot] = used
        self.lengths.pop()
        return last if slot != last else None

    def shrink(self, room: int = 256) -> None:
        """With no sequence left, back to an empty cache of ``room`` columns (a long answer's room freed)."""
        assert self.rows == 0, "only an idle decoder shrinks"
        if self.keys[0].shape[0] or self.keys[0].shape[2] > room:
            self.keys = [self._empty(0, room) for _ in self.keys]
            self.values = [self._empty(0, room) for _ in self.values]

    def _reserve(self, columns: int) -> None:
        room = self.keys[0].shape[2]
        if columns <= room:
            return
        while room < columns:
            room *= 2
        grow = room - self.keys[0].shape[2]
        pad = (0, 0, 0, grow)  # along the sequence dimension
        self.keys = [F.pad(k, pad) for k in self.keys]
        self.values = [F.pad(v, pad) for v in self.values]

    def copy_prefix(self, slot: int, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Starts ``slot`` from a prefix's keys and values (per layer, [kv_heads, length, head_dim])."""
        length = keys[0].shape[1]
        self._reserve(length)
        for cache, source in zip((*self.keys, *self.values), (*keys, *values), strict=True):
            cache[slot, :, :length] = source
        self.lengths[slot] = length

    def slot_prefix(self, slot: int, length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copies of the first ``length`` columns of ``slot``'s keys and values, per layer."""
        return [k[slot, :, :length].clone() for k in self.keys], [v[slot, :, :length].clone() for v in self.values]

    # ---- forward passes ----------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, slots: list[int], prompts: list[list[int]], adapters: list[int]) -> torch.Tensor:
        """Runs each of ``prompts`` after what its slot holds (``slots``: consecutive, e.g. the slots just
        added), in one pass; the logits of each prompt's last token ([len(slots), vocab], float32).
        Shorter prompts are padded at the end: their padding writes columns past the prompt, which stay
        masked and are overwritten by the tokens that follow."""
        first = slots[0]
        if slots != list(range(first, first + len(slots))):
            raise ValueError("prefill takes consecutive slots")
        width = max(len(p) for p in prompts)
        ids = torch.tensor([p + [p[-1]] * (width - len(p)) for p in prompts], device=self.device)
        starts = torch.tensor([self.lengths[s] for s in slots], device=self.device)
        last = torch.tensor([len(p) - 1 for p in prompts], device=self.device)
        logits = self._forward(ids, starts, slice(first, first + len(slots)), last, RowAdapters(self.bank, adapters))
        for slot, prompt in zip(slots, prompts, strict=True):
            self.lengths[slot] += len(prompt)
        return logits

    @torch.no_grad()
    def step(self, tokens: list[int], adapters: list[int]) -> torch.Tensor:
        """One new token for every active slot (slot i gets ``tokens[i]``); logits [rows, vocab], float32."""
        rows = self.rows
        ids = torch.tensor(tokens, device=self.device).unsqueeze(1)
        starts = torch.tensor(self.lengths, device=self.device)
        last = torch.zeros(rows, dtype=torch.long, device=self.device)
        logits = self._forward(ids, starts, slice(0, rows), last, RowAdapters(self.bank, adapters))
        for slot in range(rows):
            self.lengths[slot] += 1
        return logits

    def _project(self, adapters: RowAdapters, x: torch.Tensor, linear, layer: int, name: str) -> torch.Tensor:
        out = self.linears(linear, x)
        delta = adapters.delta(x, layer, name)
        return out if delta is None else out + delta

    def _forward(self, ids, starts, slots: slice, last, adapters: RowAdapters) -> torch.Tensor:
        """Row b of ``ids`` ([rows, width]) continues slot ``slots.start + b`` from column ``starts[b]``;
        the logits at index ``last[b]`` of each row."""
        lm = self.lm
        batch, width = ids.shape
        positions = starts.unsqueeze(1) + torch.arange(width, device=self.device)  # [rows, width]
        columns = int(positions.max()) + 1
        self._reserve(columns)
        # query j of row b (at position starts[b] + j) sees the columns up to its own position
        attend = (torch.arange(columns, device=self.device) <= positions.unsqueeze(-1)).unsqueeze(1)
        slot_index = torch.arange(slots.start, slots.stop, device=self.device).unsqueeze(1)  # [rows, 1]
        hidden = lm.model.embed_tokens(ids)
        cos, sin = lm.model.rotary_emb(hidden, positions)
        for index, layer in enumerate(lm.model.layers):
            attention = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = self._project(adapters, x, attention.q_proj, index, "q_proj").view(batch, width, -1, self.head_dim)
            k = self._project(adapters, x, attention.k_proj, index, "k_proj").view(batch, width, -1, self.head_dim)
            v = self._project(adapters, x, attention.v_proj, index, "v_proj").view(batch, width, -1, self.head_dim)
            q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            keys, values = self.keys[index], self.values[index]
            keys[slot_index, :, positions] = k.transpose(1, 2)  # [rows, width, kv_heads, head_dim]
            values[slot_index, :, positions] = v
            out = F.scaled_dot_product_attention(
                q,
                keys[slots, :, :columns],
                values[slots, :, :columns],
                attn_mask=attend,
                scale=attention.scaling,
                enable_gqa=self.heads != self.kv_heads,
            )
            out = out.transpose(1, 2).reshape(batch, width, -1)
            hidden = hidden + self._project(adapters, out, attention.o_proj, index, "o_proj")
            x = layer.post_attention_layernorm(hidden)
            mlp = layer.mlp
            gate = self._project(adapters, x, mlp.gate_proj, index, "gate_proj")
            up = self._project(adapters, x, mlp.up_proj, index, "up_proj")
            hidden = hidden + self._project(adapters, mlp.act_fn(gate) * up, mlp.down_proj, index, "down_proj")
        final = lm.model.norm(hidden[torch.arange(batch, device=self.device), last])
        return self.linears(lm.lm_head, final).float()
