"""
Train a small GPT for a fixed wall-clock budget, then hand the model over and report val_bpb.

This is the file experiments edit. The hyperparameters ("knobs") are the
UPPER_CASE literals below, one per line, so that tools can find and edit them;
anything else (architecture, optimizer, schedule) may change too. prepare.py
(data, tokenizer, dataloader, evaluate_bpb, export_model) is locked.

Run (after `python prepare.py`, from the directory holding both files):

    python train.py

Environment (all optional):
    AUTOSWARM_BUDGET   training seconds (float); default TIME_BUDGET. The budget
                       counts optimizer steps only: imports, data loading, model
                       build, torch.compile warm-up and evaluation are excluded.
    AUTOSWARM_SEED     integer seed for torch, numpy, random and the data order (default 42).
    AUTOSWARM_THREADS  torch intra-op (OpenMP) threads on CPU, via torch.set_num_threads;
                       unset leaves torch's default.
    AUTOSWARM_CACHE    where prepare.py put the data (default ~/.cache/autoswarm).
    AUTOSWARM_MODEL    set by the orchestrator: after training, the model is exported
                       there (prepare.export_model) for `python prepare.py evaluate`,
                       which computes the val_bpb (and test_bpb) that count.

Output: a progress line every ~5% of the budget, then the summary block

    ---
    val_bpb:          1.234567
    training_seconds: 60.0
    ...

Inside the orchestrator's sandbox the val split is sealed (not visible to this
process): the block then has no val_bpb line, and the evaluator measures it.

On CPU, peak_vram_mb is the process's peak resident memory (getrusage), and
mfu_percent is 0.00 (no meaningful peak FLOP/s to compare against). If the
loss becomes NaN or inf, training stops and the script exits with status 1
after printing a line starting "FAIL: loss is NaN"; no summary is printed.
"""

import math
import os
import random
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from prepare import (
    DataNotReady,
    ExportError,
    evaluate_bpb,
    export_model,
    get_tokenizer,
    make_dataloader,
    split_visible,
)
from torch import nn

T_START = time.time()  # total_seconds counts from here (after imports) to the end of evaluation

# ---------------------------------------------------------------------------
# Knobs (plain literals only; derived values are computed further down)

# Model
DEPTH = 8  # transformer blocks
MODEL_DIM = 512  # residual stream width
HEAD_DIM = 128  # attention heads = MODEL_DIM // HEAD_DIM
MLP_RATIO = 4  # MLP hidden width = MLP_RATIO * MODEL_DIM
SEQ_LEN = 2048  # context length in tokens (training and evaluation)
LOGIT_SOFTCAP = 15.0  # logits = cap * tanh(logits / cap); 0 disables
ROPE_BASE = 10000.0

# Optimisation
BATCH_SIZE = 32  # rows per forward/backward pass
TOTAL_BATCH_TOKENS = 524288  # tokens per optimizer step (gradient accumulation fills the gap)
MATRIX_LR = 0.04  # Muon, for the 2-D weights inside the blocks
EMBEDDING_LR = 0.3  # AdamW, token embedding
UNEMBEDDING_LR = 0.004  # AdamW, output head
WEIGHT_DECAY = 0.0  # decoupled, on Muon matrices only
MUON_MOMENTUM = 0.95
ADAM_BETA1 = 0.8
ADAM_BETA2 = 0.95
WARMUP_RATIO = 0.0  # fraction of the budget spent ramping the LR up
WARMDOWN_RATIO = 0.5  # fraction of the budget spent decaying the LR to FINAL_LR_FRAC
FINAL_LR_FRAC = 0.0

# Run
TIME_BUDGET = 300.0  # seconds of training when AUTOSWARM_BUDGET is unset
COMPILE = True  # torch.compile the model (worth it on GPU; slow to warm up on CPU)
EVAL_BATCH_SIZE = 32  # rows per evaluation forward pass (does not change the result)

# ---------------------------------------------------------------------------
# Run set-up: environment, seeds, device


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


budget_s = env_float("AUTOSWARM_BUDGET", TIME_BUDGET)
seed = int(os.environ.get("AUTOSWARM_SEED") or 42)
if os.environ.get("AUTOSWARM_THREADS"):
    # Sets torch's OpenMP pool; parallel runs on one machine each get a share of the cores.
    torch.set_num_threads(int(os.environ["AUTOSWARM_THREADS"]))

random.seed(seed)
np.random.seed(seed)
torch.manual_seed(seed)

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if device.type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
# bf16 autocast on GPU; plain fp32 on CPU, where bf16 matmuls are slower.
autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

try:
    tokenizer = get_tokenizer()
    train_loader = make_dataloader("train", BATCH_SIZE, SEQ_LEN, seed, device)
    x, y = next(train_loader)
except DataNotReady as e:
    print(f"train.py: error: {e}", file=sys.stderr)
    sys.exit(1)
vocab_size = tokenizer.vocab_size

# ---------------------------------------------------------------------------
# Model: pre-norm GPT with RoPE, QK-norm, ReLU² MLP, untied embeddings, soft-capped logits


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    # Parameter-free: a learned gain adds parameters but little in short runs.
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[None, None], angles.sin()[None, None]  # (1, 1, T, head_dim / 2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Rotate pairs (first half, second half) of each head's channels by a position-dependent angle.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.n_head = dim // head_dim
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        # QK-norm keeps attention logits bounded, which tolerates higher learning rates.
        q, k = rms_norm(apply_rotary(q, cos, sin)), rms_norm(apply_rotary(k, cos, sin))
        # Under autocast the norm may return fp32 while v is bf16; SDPA needs one dtype.
        y = F.scaled_dot_product_attention(q.type_as(v), k.type_as(v), v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, hidden, bias=False)
        self.proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, dim: int, head_dim: int, hidden: int) -> None:
        super().__init__()
        self.attn = Attention(dim, head_dim)
        self.mlp = MLP(dim, hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(rms_norm(x), cos, sin)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    def __init__(
        self, vocab: int, depth: int, dim: int, head_dim: int, hidden: int, max_seq: int
    ) -> None:
        super().__init__()
        if dim % head_dim or head_dim % 2:
            raise ValueError(
                f"MODEL_DIM ({dim}) must be a multiple of HEAD_DIM ({head_dim}), and HEAD_DIM even"
            )
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, head_dim, hidden) for _ in range(depth))
        self.head = nn.Linear(dim, vocab, bias=False)
        cos, sin = rotary_tables(max_seq, head_dim, ROPE_BASE)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.normal_(self.embed.weight, std=1.0)
        for block in self.blocks:
            for linear in (block.attn.qkv, block.mlp.fc):
                nn.init.normal_(linear.weight, std=linear.in_features**-0.5)
            # Residual branches start at zero, so every block starts as the identity.
            nn.init.zeros_(block.attn.proj.weight)
            nn.init.zeros_(block.mlp.proj.weight)
        nn.init.zeros_(self.head.weight)  # uniform predictions at step 0

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        cos, sin = self.cos[:, :, :T], self.sin[:, :, :T]
        x = rms_norm(self.embed(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(rms_norm(x)).float()
        if LOGIT_SOFTCAP > 0:
            logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        return logits


model = GPT(vocab_size, DEPTH, MODEL_DIM, HEAD_DIM, MLP_RATIO * MODEL_DIM, SEQ_LEN).to(device)
num_params = sum(p.numel() for p in model.parameters())
# Forward + backward FLOPs per token: 6 per weight outside the embedding lookup,
# plus attention scores and values (2 matmuls of T x head_dim per head, x3 for backward).
flops_per_token = 6 * (num_params - model.embed.weight.numel()) + 12 * DEPTH * MODEL_DIM * SEQ_LEN
train_model = torch.compile(model) if COMPILE else model

# ---------------------------------------------------------------------------
# Optimizers: Muon for the 2-D matrices in the blocks, AdamW for the embedding and head
#
# Muon replaces each matrix's (momentum) gradient by its nearest semi-orthogonal
# matrix, computed with a few Newton-Schulz iterations, so all directions of the
# update move at the same rate.


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    # Quintic Newton-Schulz iteration; its coefficients push singular values
    # towards 1 quickly without needing them to converge exactly.
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.mT
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    def __init__(
        self, params: list[nn.Parameter], lr: float, momentum: float, weight_decay: float
    ) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - momentum)
                update = orthogonalize(p.grad.lerp(buf, momentum))  # Nesterov momentum
                # Orthogonal updates have unit singular values; scale so wide and
                # tall matrices get comparable per-element step sizes.
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                p.mul_(1 - lr * wd)
                p.add_(update, alpha=-lr * scale)


matrices = [p for p in model.blocks.parameters() if p.ndim == 2]
optimizers: list[torch.optim.Optimizer] = [
    Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, weight_decay=WEIGHT_DECAY),
    torch.optim.AdamW(
        [
            {"params": [model.embed.weight], "lr": EMBEDDING_LR},
            {"params": [model.head.weight], "lr": UNEMBEDDING_LR},
        ],
        betas=(ADAM_BETA1, ADAM_BETA2),
        eps=1e-10,
        weight_decay=0.0,
    ),
]
for opt in optimizers:
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]


def lr_multiplier(progress: float) -> float:
    """LR scale at a fraction `progress` of the time budget: warm-up, flat, linear warm-down."""
    if progress < WARMUP_RATIO:
        return (progress + 1e-3) / WARMUP_RATIO
    if progress > 1.0 - WARMDOWN_RATIO:
        cooldown = (1.0 - progress) / WARMDOWN_RATIO
        return FINAL_LR_FRAC + (1.0 - FINAL_LR_FRAC) * max(cooldown, 0.0)
    return 1.0


# ---------------------------------------------------------------------------
# Training loop: run until the budget is spent; the schedule follows elapsed time


def sync() -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


tokens_per_micro_batch = BATCH_SIZE * SEQ_LEN
grad_accum = max(1, round(TOTAL_BATCH_TOKENS / tokens_per_micro_batch))
tokens_per_step = grad_accum * tokens_per_micro_batch
print(
    f"device {device} | params {num_params / 1e6:.2f}M | vocab {vocab_size} | "
    f"{tokens_per_step:,} tokens/step ({grad_accum} x {BATCH_SIZE} x {SEQ_LEN}) | "
    f"budget {budget_s:g}s | seed {seed}",
    flush=True,
)

training_time = 0.0
step = 0
smooth_loss = 0.0
next_report = 0.0  # progress fraction of the next log line
REPORT_EVERY = 0.05
while training_time < budget_s:
    sync()
    t0 = time.time()
    progress = training_time / budget_s
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier(progress)
    for _ in range(grad_accum):
        with autocast:
            logits = train_model(x)
            loss = F.cross_entropy(logits.view(-1, vocab_size), y.reshape(-1))
        (loss / grad_accum).backward()
        x, y = next(train_loader)  # fetch the next batch while the GPU works
    for opt in optimizers:
        opt.step()
    model.zero_grad(set_to_none=True)
    loss_value = loss.item()  # also synchronizes the GPU
    dt = time.time() - t0
    if not math.isfinite(loss_value):
        print(f"FAIL: loss is NaN/inf ({loss_value}) at step {step}; stopping", flush=True)
        sys.exit(1)
    # The first step of a compiled model is mostly compilation: leave it off the clock.
    if step > 0 or not COMPILE:
        training_time += dt
    step += 1
    smooth_loss = loss_value if step == 1 else 0.9 * smooth_loss + 0.1 * loss_value
    if training_time / budget_s >= next_report or training_time >= budget_s:
        done = min(training_time / budget_s, 1.0)
        print(
            f"step {step:05d} | {100 * done:5.1f}% | loss {smooth_loss:.4f} | "
            f"lr x{lr_multiplier(progress):.2f} | dt {1000 * dt:.0f}ms | "
            f"{tokens_per_step / dt:,.0f} tok/s | elapsed {training_time:.1f}s",
            flush=True,
        )
        next_report = (math.floor(done / REPORT_EVERY) + 1) * REPORT_EVERY

# ---------------------------------------------------------------------------
# Hand-over, evaluation and summary
#
# The orchestrator's number is computed by prepare.py's evaluator from the model
# exported here, in the autocast context it is evaluated in (export_model makes the
# casts part of the program). Evaluating here too keeps `python train.py` useful by
# hand, and lets the orchestrator check the printed value against its own.

model.eval()
export_seconds = 0.0
if os.environ.get("AUTOSWARM_MODEL"):
    t0 = time.time()
    try:
        with autocast:
            export_model(model, os.environ["AUTOSWARM_MODEL"], SEQ_LEN, EVAL_BATCH_SIZE)
    except ExportError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    export_seconds = time.time() - t0

val_bpb = None
if split_visible("val"):
    try:
        with autocast:
            val_bpb = evaluate_bpb(model, SEQ_LEN, EVAL_BATCH_SIZE)
    except DataNotReady as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    if not math.isfinite(val_bpb):
        print(f"FAIL: val_bpb is NaN/inf ({val_bpb}) after {step} steps", flush=True)
        sys.exit(1)
else:
    print(
        "val_bpb is evaluated by the orchestrator: the validation split is sealed (not visible here)"
    )


def peak_memory_mb() -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 1024**2
    # CPU: peak resident set size of this process (KiB on Linux, bytes on macOS).
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024**2 if sys.platform == "darwin" else peak / 1024


def mfu_percent(tokens: int, seconds: float) -> float:
    # Dense bf16 peak FLOP/s of known GPUs; 0 where there is no meaningful peak (CPU, unknown GPU).
    peaks = {"H100": 989e12, "H200": 989e12, "B200": 2250e12, "A100": 312e12}
    if device.type != "cuda" or seconds <= 0:
        return 0.0
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in peaks.items() if k in name), 0.0)
    return 100 * flops_per_token * tokens / seconds / peak if peak else 0.0


total_tokens = step * tokens_per_step
print("---")
if val_bpb is not None:
    print(f"val_bpb:          {val_bpb:.6f}")
print(f"training_seconds: {training_time:.1f}")
print(f"total_seconds:    {time.time() - T_START:.1f}")
print(f"export_seconds:   {export_seconds:.1f}")
print(f"peak_vram_mb:     {peak_memory_mb():.1f}")
print(f"mfu_percent:      {mfu_percent(total_tokens, training_time):.2f}")
print(f"total_tokens_M:   {total_tokens / 1e6:.1f}")
print(f"num_steps:        {step}")
print(f"num_params_M:     {num_params / 1e6:.1f}")
print(f"depth:            {DEPTH}")
