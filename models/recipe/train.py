#!/usr/bin/python3
"""Train, evaluate and export ebserve's embedded default model (models/ebserve-moe-8x).

A Mixtral-architecture byte-level MoE: 8 layers, hidden 128, 4 heads (head_dim 32), 2 KV heads,
8 SwiGLU experts (intermediate 256) per layer, top-2 routing, context 256. Runs on Debian's
python3-torch 1.13 (/usr/bin/python3), CPU, 2 threads. `make train-model` runs it; see RECIPE.md.

  /usr/bin/python3 models/recipe/train.py [--steps N] [--lr LR] [--init CKPT] [--train-only] [--out DIR] [--export-only]
  (`make train-model` runs the two phases that made the shipped model)

Conventions the runtime must match (also in RECIPE.md):
  * RMSNorm: y = x * rsqrt(mean(x^2) + eps) * w, eps 1e-5, computed in float32.
  * Rotary (Hugging Face layout, NOT interleaved): inv_freq[i] = theta^(-2i/d) for i < d/2,
    angle = pos * inv_freq, cos/sin repeated over both halves (cat(freqs, freqs)),
    x' = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[d/2:], x[:d/2]).
    Applied to q and k per head (d = head_dim = 32), positions 0..255.
  * GQA: query head h uses KV head h // 2 (Hugging Face repeat_kv order).
  * Attention scale 1/sqrt(head_dim), causal.
  * Router: logits = gate(x) (no bias); p = softmax over all 8 experts; take the top 2;
    renormalise the two weights to sum to 1; y = sum_k w_k * expert_k(x).
  * Expert: w2(silu(w1 x) * w3 x).
  * Block: h = x + attn(input_layernorm(x)); out = h + moe(post_attention_layernorm(h)).
  * Final: lm_head(norm(x)); lm_head is untied from embed_tokens.
"""
import argparse
import json
import math
import os
import platform
import random
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import data as D  # noqa: E402

CFG = dict(
    vocab_size=256,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_local_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
)


# ---------------------------------------------------------------- model

class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_cos_sin(seq, head_dim, theta):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    t = torch.arange(seq, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, self.nh, self.nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = d // self.nh
        self.q_proj = nn.Linear(d, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, d, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.nh // self.nkv
        k = k.repeat_interleave(rep, dim=1)  # head h -> kv head h // rep (HF repeat_kv)
        v = v.repeat_interleave(rep, dim=1)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.hd))
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, self.nh * self.hd)
        return self.o_proj(y)


class Expert(nn.Module):
    def __init__(self, d, ff):
        super().__init__()
        self.w1 = nn.Linear(d, ff, bias=False)
        self.w2 = nn.Linear(ff, d, bias=False)
        self.w3 = nn.Linear(d, ff, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SparseMoE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.E, self.k = c["num_local_experts"], c["num_experts_per_tok"]
        self.gate = nn.Linear(c["hidden_size"], self.E, bias=False)
        self.experts = nn.ModuleList(Expert(c["hidden_size"], c["intermediate_size"]) for _ in range(self.E))

    def forward(self, x):
        B, T, Dm = x.shape
        xf = x.reshape(-1, Dm)
        probs = self.gate(xf).float().softmax(-1)  # [N, E]
        topw, topi = probs.topk(self.k, dim=-1)  # [N, k]
        topw = topw / topw.sum(-1, keepdim=True)
        flat_e = topi.reshape(-1)  # slot j -> token j // k
        order = torch.argsort(flat_e)
        counts = torch.bincount(flat_e, minlength=self.E).tolist()
        tok_sorted = order // self.k
        w_sorted = topw.reshape(-1)[order].unsqueeze(-1)
        out = torch.zeros_like(xf)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            idx = tok_sorted[start:start + n]
            y = self.experts[e](xf[idx]) * w_sorted[start:start + n]
            out.index_add_(0, idx, y)
            start += n
        return out.view(B, T, Dm), (probs, topi)


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.block_sparse_moe = SparseMoE(c)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        m, route = self.block_sparse_moe(self.post_attention_layernorm(x))
        return x + m, route


class Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class MixtralLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = Inner(c)
        self.lm_head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        hd = c["hidden_size"] // c["num_attention_heads"]
        cos, sin = rope_cos_sin(c["max_position_embeddings"], hd, c["rope_theta"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self._init()

    def _init(self):
        std = 0.02
        proj_std = std / math.sqrt(2 * self.c["num_hidden_layers"])
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            s = proj_std if (name.endswith("o_proj.weight") or name.endswith("w2.weight")) else std
            nn.init.normal_(p, 0.0, s)

    def forward(self, idx):
        B, T = idx.shape
        x = self.model.embed_tokens(idx)
        cos, sin = self.cos[:T], self.sin[:T]
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        routes = []
        for layer in self.model.layers:
            x, route = layer(x, cos, sin, mask)
            routes.append(route)
        logits = self.lm_head(self.model.norm(x))
        return logits, routes


def expert_counts(routes, E):
    """[layers, E] routed token-slot counts."""
    return torch.stack([torch.bincount(topi.reshape(-1), minlength=E) for _, topi in routes])


def balance_loss(routes, E, groups):
    """Load balancing (Switch / Mixtral): E * sum_e f_e * P_e per layer, f_e = fraction of routed
    token-slots sent to e (no gradient), P_e = mean router probability of e. Computed separately
    for each group of token rows (text rows, arithmetic rows: so that no expert can serve only one
    kind of data and starve on the other), weighted by the group's token share, averaged over layers."""
    total, n_all = 0.0, sum(int(g.sum()) for g in groups)
    for probs, topi in routes:
        for g in groups:
            if not bool(g.any()):
                continue
            p, t = probs[g], topi[g]
            f = torch.bincount(t.reshape(-1), minlength=E).float() / t.numel()
            total = total + (int(g.sum()) / n_all) * E * (f * p.mean(0)).sum()
    return total / len(routes)


# ---------------------------------------------------------------- helpers

def log(msg, fh=None):
    print(msg, flush=True)
    if fh is not None:
        fh.write(msg + "\n")
        fh.flush()


def make_batch(rng, corpora, names, weights, tpairs, batch, seq, n_arith):
    rows = []
    for i in range(batch):
        if i < n_arith:
            rows.append(D.arith_sequence(rng, tpairs, seq + 1))
        else:
            name = rng.choices(names, weights)[0]
            tr = corpora[name]["train"]
            s = rng.randrange(len(tr) - seq - 1)
            rows.append(tr[s:s + seq + 1])
    t = torch.tensor([list(r) for r in rows], dtype=torch.long)
    return t[:, :-1], t[:, 1:]


def lr_at(step, total, peak, warmup, floor):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, p)))


@torch.no_grad()
def eval_text(model, held, seq=256, stride=128, batch=16, max_bytes=None):
    """Bits per byte over held-out bytes: windows of `seq` bytes with stride `stride`; each byte
    is scored once, with >= seq - stride bytes of context (except the slice's first window).
    Also returns per-layer expert slot counts over the scored windows."""
    model.eval()
    if max_bytes:
        held = held[:max_bytes]
    L = len(held)
    wins = []  # (start, first scored target index within the window)
    s = 0
    while True:
        if s + seq + 1 > L:
            s2 = max(0, L - seq - 1)
            first = (wins[-1][0] + seq) - s2 if wins else 0
            wins.append((s2, first))
            break
        wins.append((s, 0 if s == 0 else seq - stride))
        s += stride
    total_nll, total_n = 0.0, 0
    counts = None
    for i in range(0, len(wins), batch):
        chunk = wins[i:i + batch]
        t = torch.tensor([list(held[a:a + seq + 1]) for a, _ in chunk], dtype=torch.long)
        logits, routes = model(t[:, :-1])
        nll = F.cross_entropy(logits.reshape(-1, 256), t[:, 1:].reshape(-1), reduction="none").view(len(chunk), seq)
        scored = torch.zeros(len(chunk), seq, dtype=torch.bool)
        for r, (_, first) in enumerate(chunk):
            total_nll += nll[r, first:].sum().item()
            total_n += seq - first
            scored[r, first:] = True
        sel = scored.reshape(-1)
        cnt = torch.stack([torch.bincount(topi[sel].reshape(-1), minlength=probs.shape[-1]) for probs, topi in routes])
        counts = cnt if counts is None else counts + cnt
    model.train()
    return total_nll / total_n / math.log(2), total_n, counts


@torch.no_grad()
def greedy(model, prompt, max_new, stop=None):
    model.eval()
    ids = list(prompt)
    out = []
    for _ in range(max_new):
        logits, _ = model(torch.tensor([ids[-256:]], dtype=torch.long))
        nxt = int(logits[0, -1].argmax())
        if stop is not None and nxt == stop:
            break
        out.append(nxt)
        ids.append(nxt)
    model.train()
    return bytes(out)


@torch.no_grad()
def eval_arith(model, pairs, batch=100):
    """Exact match of greedy decoding of "a+b=" until newline or 4 bytes. Batched: all prompts
    in a batch have the same length (two-digit + two-digit), so decoding steps line up."""
    model.eval()
    correct, results = 0, []
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        ids = torch.tensor([list(b"%d+%d=" % (a, b)) for a, b in chunk], dtype=torch.long)
        outs = [bytearray() for _ in chunk]
        done = [False] * len(chunk)
        for _ in range(4):
            logits, _ = model(ids)
            nxt = logits[:, -1].argmax(-1)
            for r, n in enumerate(nxt.tolist()):
                if not done[r]:
                    if n == 10:
                        done[r] = True
                    else:
                        outs[r].append(n)
            ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
        for (a, b), o in zip(chunk, outs):
            ok = o.decode("latin-1") == str(a + b)
            correct += ok
            results.append((a, b, o.decode("latin-1"), ok))
    model.train()
    return correct / len(pairs), results


def evaluate(model, corpora, hpairs, fh, label):
    res = {"text_bits_per_byte": {}, "arith": {}}
    all_nll, all_n, counts = 0.0, 0, None
    for name, c in corpora.items():
        bpb, n, cnt = eval_text(model, c["heldout"])
        res["text_bits_per_byte"][name] = round(bpb, 4)
        all_nll += bpb * n
        all_n += n
        counts = cnt if counts is None else counts + cnt
    res["text_bits_per_byte"]["all"] = round(all_nll / all_n, 4)
    res["text_bytes_scored"] = all_n
    share = counts.float() / counts.sum(-1, keepdim=True)
    res["expert_share_per_layer"] = [[round(v, 4) for v in row] for row in share.tolist()]
    res["expert_share_min_per_layer"] = [round(v, 4) for v in share.min(-1).values.tolist()]
    res["expert_share_min"] = round(share.min().item(), 4)
    acc, results = eval_arith(model, hpairs)
    res["arith"] = {"exact_match": round(acc, 4), "n": len(hpairs),
                    "wrong_examples": [f"{a}+{b}={o!r}" for a, b, o, ok in results if not ok][:20]}
    log(f"[eval {label}] held-out text bits/byte {res['text_bits_per_byte']} | "
        f"arithmetic exact match {acc:.4f} ({len(hpairs)}) | min expert share {res['expert_share_min']:.4f} "
        f"(per layer {res['expert_share_min_per_layer']})", fh)
    return res


# ---------------------------------------------------------------- export

HF_CONFIG_ORDER = ["architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size",
                   "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "num_local_experts",
                   "num_experts_per_tok", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                   "tie_word_embeddings", "hidden_act", "torch_dtype", "router_aux_loss_coef",
                   "ebserve_tokenizer"]


def export_names(model):
    """Mixtral tensor names in a stable order (the module names are already Mixtral's)."""
    sd = model.state_dict()
    names = ["model.embed_tokens.weight"]
    for i in range(model.c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight"]
        names += [p + f"self_attn.{n}_proj.weight" for n in "qkvo"]
        names += [p + "post_attention_layernorm.weight", p + "block_sparse_moe.gate.weight"]
        for e in range(model.c["num_local_experts"]):
            names += [p + f"block_sparse_moe.experts.{e}.{w}.weight" for w in ("w1", "w2", "w3")]
    names += ["model.norm.weight", "lm_head.weight"]
    assert set(names) == set(sd.keys()), set(sd.keys()) ^ set(names)
    return names, sd


def write_safetensors(path, tensors, metadata):
    """tensors: list of (name, bf16 tensor). Format: u64 LE header length, JSON header padded with
    spaces to a multiple of 8, then the raw little-endian data in header order."""
    header, blobs, off = {}, [], 0
    for name, t in tensors:
        b = t.contiguous().view(torch.int16).numpy().astype("<i2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = metadata
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    import numpy as np
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        assert h["dtype"] == "BF16"
        a, b = h["data_offsets"]
        arr = np.frombuffer(raw[base + a:base + b], dtype="<i2").copy()
        out[name] = torch.from_numpy(arr).view(torch.bfloat16).reshape(h["shape"])
    return out, header.get("__metadata__", {})


# ---------------------------------------------------------------- main

PHASE_KEYS = ["steps", "lr", "min_lr_frac", "warmup", "wd", "clip", "aux_coef", "arith_frac", "seed", "init"]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--aux-coef", type=float, default=0.05)
    ap.add_argument("--arith-frac", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--out", default=os.path.join(D.ROOT, "models", "ebserve-moe-8x"))
    ap.add_argument("--log", default=os.path.join(D.ROOT, "build", "train.log"))
    ap.add_argument("--ckpt", default=os.path.join(D.ROOT, "build", "train-ckpt.pt"))
    ap.add_argument("--export-only", action="store_true", help="skip training; evaluate and export --ckpt")
    ap.add_argument("--train-only", action="store_true", help="save --ckpt after training; no evaluation or export")
    ap.add_argument("--init", default=None, help="start from this checkpoint's weights (a further phase; "
                    "fresh optimizer and schedule); its train_info is carried into the totals")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    os.makedirs(os.path.dirname(args.log), exist_ok=True)
    fh = open(args.log, "a" if args.export_only else "w")
    log(f"ebserve-moe-8x recipe: torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"python {platform.python_version()}, args {vars(args)}", fh)

    corpora = D.load_corpora()
    names = list(corpora)
    weights = [1.0 / len(names)] * len(names)  # equal share of text sequences per corpus
    hpairs = D.heldout_pairs()
    tpairs = D.train_pairs()
    assert not set(hpairs) & set(tpairs)
    for n, c in corpora.items():
        log(f"corpus {n}: {len(c['train']) + len(c['heldout'])} bytes, train {len(c['train'])}, "
            f"held out {len(c['heldout'])} (tail)", fh)
    log(f"arithmetic: {len(tpairs)} training pairs, {len(hpairs)} held-out pairs", fh)

    model = MixtralLM(CFG)
    nparams = sum(p.numel() for p in model.parameters())
    log(f"parameters: {nparams} ({nparams * 2 / 1e6:.2f} MB in bf16)", fh)

    n_arith = round(args.batch * args.arith_frac)
    train_info = {}
    prior = None
    if args.init and not args.export_only:
        ck = torch.load(args.init)
        model.load_state_dict(ck["model"])
        prior = ck["train_info"]
        if "phases" not in prior:
            a = ck.get("args", {})
            prior = dict(prior, **{k: a[k] for k in PHASE_KEYS if k in a})
        log(f"phase 2: starting from {args.init} ({prior})", fh)
    t0 = time.time()
    if not args.export_only:
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
        rng = random.Random(args.seed + (1000 if prior else 0))
        tok_per_step = args.batch * args.seq
        ema = None
        E = CFG["num_local_experts"]
        is_arith = torch.zeros(args.batch, args.seq, dtype=torch.bool)
        is_arith[:n_arith] = True
        groups = [~is_arith.reshape(-1), is_arith.reshape(-1)]  # text rows, arithmetic rows
        counts_acc = torch.zeros(CFG["num_hidden_layers"], CFG["num_local_experts"], dtype=torch.long)
        last_t, last_step = time.time(), 0
        for step in range(args.steps):
            lr = lr_at(step, args.steps, args.lr, args.warmup, args.lr * args.min_lr_frac)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = make_batch(rng, corpora, names, weights, tpairs, args.batch, args.seq, n_arith)
            logits, routes = model(x)
            lm = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
            aux_m = balance_loss(routes, E, groups)
            loss = lm + args.aux_coef * aux_m
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            counts_acc += expert_counts(routes, E)
            ema = lm.item() if ema is None else 0.95 * ema + 0.05 * lm.item()
            if (step + 1) % args.log_every == 0 or step == 0 or step + 1 == args.steps:
                now = time.time()
                tps = (step + 1 - last_step) * tok_per_step / max(1e-9, now - last_t)
                el = now - t0
                eta = el / (step + 1) * (args.steps - step - 1)
                share = counts_acc.float() / counts_acc.sum(-1, keepdim=True)
                log(f"step {step + 1}/{args.steps} loss {lm.item():.4f} (ema {ema:.4f}, {ema / math.log(2):.3f} bits) "
                    f"aux {aux_m.item():.4f} lr {lr:.2e} gnorm {float(gn):.2f} min-share(train batches) {share.min().item():.4f} "
                    f"{tps:,.0f} tok/s elapsed {el / 60:.1f}m ETA {eta / 60:.1f}m", fh)
                last_t, last_step = now, step + 1
                counts_acc.zero_()
            if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
                bpb = {n: round(eval_text(model, c["heldout"], max_bytes=8192)[0], 3) for n, c in corpora.items()}
                acc, _ = eval_arith(model, hpairs[:100])
                log(f"  [quick eval @ {step + 1}] held-out bits/byte (first 8 KiB each) {bpb}, arithmetic {acc:.2f} (100)", fh)
        wall = time.time() - t0
        train_info = {"steps": args.steps, "tokens_seen": args.steps * tok_per_step, "wall_time_s": round(wall, 1),
                      "final_train_loss_nats": round(lm.item(), 4), "final_train_loss_ema_nats": round(ema, 4),
                      "final_aux_loss": round(aux_m.item(), 4)}
        log(f"training done: {args.steps} steps, {args.steps * tok_per_step} tokens, {wall / 60:.1f} min", fh)
        this = dict(train_info, **{k: getattr(args, k) for k in PHASE_KEYS})
        train_info["phases"] = [this]
        if prior:
            train_info = {**train_info, "phases": prior.get("phases", [prior]) + [this],
                          "steps": prior["steps"] + args.steps,
                          "tokens_seen": prior["tokens_seen"] + train_info["tokens_seen"],
                          "wall_time_s": round(prior["wall_time_s"] + wall, 1)}
        torch.save({"model": model.state_dict(), "train_info": train_info, "args": vars(args)}, args.ckpt)
        if args.train_only:
            log(f"saved {args.ckpt}; --train-only: no evaluation or export", fh)
            return
    else:
        ck = torch.load(args.ckpt)
        model.load_state_dict(ck["model"])
        train_info = ck["train_info"]

    # ---- evaluate the float32 weights, then export bf16 and evaluate what ships
    ev32 = evaluate(model, corpora, hpairs, fh, "float32 weights")

    out = args.out
    os.makedirs(os.path.join(out, "canaries"), exist_ok=True)
    names_order, sd = export_names(model)
    tensors = [(n, sd[n].detach().to(torch.bfloat16)) for n in names_order]
    write_safetensors(os.path.join(out, "model.safetensors"), tensors,
                      {"format": "pt", "producer": "ebserve models/recipe/train.py"})
    config = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", **CFG,
              "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "bfloat16",
              "router_aux_loss_coef": args.aux_coef, "ebserve_tokenizer": "bytes"}
    config = {k: config[k] for k in HF_CONFIG_ORDER}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")

    # reload what was written (bf16), into float32, and evaluate again
    loaded, _ = read_safetensors(os.path.join(out, "model.safetensors"))
    for n, t in tensors:
        assert torch.equal(loaded[n].view(torch.int16), t.view(torch.int16)), n
    shipped = MixtralLM(CFG)
    shipped.load_state_dict({n: t.float() for n, t in loaded.items()})
    ev16 = evaluate(shipped, corpora, hpairs, fh, "exported bf16 weights")

    # reference for the runtime's tests: float32 compute from the bf16 weights
    ref_prompts = [b"Call me Ishmael. Some years ago", b"In the beginning God created", b"12+34="]
    refs = []
    with torch.no_grad():
        shipped.eval()
        for p in ref_prompts:
            logits, _ = shipped(torch.tensor([list(p)], dtype=torch.long))
            cont = greedy(shipped, p, 32)
            refs.append({"prompt": p.decode("ascii"), "prompt_bytes": list(p),
                         "last_logits": [float(v) for v in logits[0, -1].tolist()],
                         "greedy_bytes": list(cont), "greedy_text": cont.decode("utf-8", "replace")})
            log(f"reference {p!r} -> {cont!r}", fh)
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({"about": "float32 forward pass from the bf16 weights in model.safetensors (torch "
                   + torch.__version__ + "); last_logits = logits at the last prompt position (256 "
                   "values, index = byte); greedy_bytes = 32 bytes of greedy (argmax) continuation, "
                   "no stop byte.", "prompts": refs}, f, indent=1)
        f.write("\n")

    # canaries (held-out: never trained on)
    tc = D.text_canaries(corpora)
    ac = D.arith_canaries()
    with open(os.path.join(out, "canaries", "text.jsonl"), "w") as f:
        for it in tc:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    with open(os.path.join(out, "canaries", "arithmetic.jsonl"), "w") as f:
        for it in ac:
            f.write(json.dumps(it) + "\n")

    # a few sample generations from the shipped weights, for the README
    samples = []
    for it in tc[::len(tc) // 3][:3]:
        g = greedy(shipped, it["prompt"].encode(), 48)
        samples.append({"prompt": it["prompt"], "greedy": g.decode("utf-8", "replace"),
                        "reference": it["continuation"]})

    info = {
        "model": "ebserve-moe-8x",
        "architecture": {**CFG, "head_dim": CFG["hidden_size"] // CFG["num_attention_heads"],
                         "tie_word_embeddings": False, "parameters": nparams},
        "training": {**train_info, "batch": args.batch, "seq": args.seq,
                     "tokens_per_step": args.batch * args.seq, "optimizer": "AdamW(0.9, 0.95, eps 1e-8)",
                     "schedule": "each phase: linear warm-up over `warmup` steps to `lr`, cosine decay to "
                                 "lr * min_lr_frac at its last step; a later phase starts from the previous "
                                 "phase's weights with a fresh optimizer", "weight_decay": args.wd,
                     "weight_decay_on": "2-D weights only (not RMSNorm weights)", "grad_clip": args.clip,
                     "router_aux_loss_coef": args.aux_coef,
                     "aux_loss": "mean over layers of E * sum_e f_e * P_e (f_e = share of routed token-slots, P_e = mean router prob), "
                                 "computed separately over the text rows and the arithmetic rows of the batch, weighted by token share",
                     "arith_fraction": args.arith_frac, "seed": args.seed, "threads": args.threads,
                     "torch": torch.__version__, "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                     + platform.platform()},
        "data": {"text": {n: {"source": c["source"], "bytes": len(c["train"]) + len(c["heldout"]),
                              "train_bytes": len(c["train"]), "heldout_bytes": len(c["heldout"]),
                              "heldout": "tail of the corpus"} for n, c in corpora.items()},
                 "text_sampling": "equal share of text sequences per corpus; random 257-byte windows",
                 "arithmetic": {"format": "a+b=c lines, a, b in 10..99", "train_pairs": len(tpairs),
                                "heldout_pairs": len(hpairs), "fraction_of_sequences": args.arith_frac}},
        "eval_method": {"text": "bits per byte = mean next-byte cross entropy / ln 2 over each corpus's held-out tail; "
                                "256-byte windows, stride 128, each byte scored once with >= 128 bytes of context "
                                "(except the first 128 of a slice)",
                        "arithmetic": "greedy decoding of 'a+b=' until newline or 4 bytes; exact match",
                        "expert_share": "fraction of routed token-slots per expert per layer on the held-out text"},
        "eval_exported_bf16": ev16,
        "eval_float32_before_export": ev32,
        "bars": {"text_bits_per_byte<=2.0": ev16["text_bits_per_byte"]["all"] <= 2.0,
                 "arith_exact_match>=0.90": ev16["arith"]["exact_match"] >= 0.90,
                 "min_expert_share>=0.02": ev16["expert_share_min"] >= 0.02},
        "samples": samples,
        "canaries": {"text": len(tc), "arithmetic": len(ac)},
    }
    with open(os.path.join(out, "training.json"), "w") as f:
        json.dump(info, f, indent=1, ensure_ascii=False)
        f.write("\n")
    log(f"exported to {out}; bars: {info['bars']}", fh)
    log(json.dumps({"text_bits_per_byte": ev16["text_bits_per_byte"], "arith_exact_match": ev16["arith"]["exact_match"],
                    "min_expert_share": ev16["expert_share_min"], **train_info}), fh)


if __name__ == "__main__":
    main()
