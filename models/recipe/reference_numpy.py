#!/usr/bin/python3
"""An independent, plain-numpy forward pass of models/ebserve-moe-8x, written from the documented
conventions only (RECIPE.md "Architecture"), not from train.py. It reads config.json and
model.safetensors (bf16 -> float32 by shifting the 16 bits up), runs the prompts of
reference.json, and prints the largest logit difference and whether the 32-byte greedy
continuation matches. A spec-level cross-check for a new runtime (computes in float64; slow).

  /usr/bin/python3 models/recipe/reference_numpy.py models/ebserve-moe-8x
"""
import json
import struct
import sys

import numpy as np
d = sys.argv[1]
cfg = json.load(open(d + "/config.json"))
raw = open(d + "/model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]; hdr = json.loads(raw[8:8 + n]); base = 8 + n
W = {}
for k, h in hdr.items():
    if k == "__metadata__": continue
    a, b = h["data_offsets"]
    u = np.frombuffer(raw[base + a:base + b], dtype="<u2").astype(np.uint32) << 16
    W[k] = u.view(np.float32).reshape(h["shape"])
H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]; hd = H // nh
def rms(x, w): return x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg["rms_norm_eps"]) * w
def rope(x):  # x [T, hd]
    T = x.shape[0]
    inv = cfg["rope_theta"] ** (-np.arange(0, hd, 2) / hd)
    th = np.arange(T)[:, None] * inv[None]
    cos = np.concatenate([np.cos(th)] * 2, -1); sin = np.concatenate([np.sin(th)] * 2, -1)
    rh = np.concatenate([-x[:, hd // 2:], x[:, :hd // 2]], -1)
    return x * cos + rh * sin
def forward(ids):
    x = W["model.embed_tokens.weight"][ids].astype(np.float64)
    T = len(ids)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = h @ W[p + "self_attn.q_proj.weight"].T; k = h @ W[p + "self_attn.k_proj.weight"].T; v = h @ W[p + "self_attn.v_proj.weight"].T
        outs = []
        for hh in range(nh):
            g = hh // (nh // nkv)
            qh = rope(q[:, hh * hd:(hh + 1) * hd]); kh = rope(k[:, g * hd:(g + 1) * hd]); vh = v[:, g * hd:(g + 1) * hd]
            s = qh @ kh.T / np.sqrt(hd); s[np.triu(np.ones((T, T), bool), 1)] = -np.inf
            s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
            outs.append(s @ vh)
        x = x + np.concatenate(outs, -1) @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        lg = h @ W[p + "block_sparse_moe.gate.weight"].T
        pr = np.exp(lg - lg.max(-1, keepdims=True)); pr /= pr.sum(-1, keepdims=True)
        y = np.zeros_like(h)
        for t in range(T):
            top = np.argsort(-pr[t])[:2]; w = pr[t, top] / pr[t, top].sum()
            for e, we in zip(top, w):
                q1 = p + f"block_sparse_moe.experts.{e}."
                a = W[q1 + "w1.weight"] @ h[t]; b = W[q1 + "w3.weight"] @ h[t]
                y[t] += we * (W[q1 + "w2.weight"] @ (a / (1 + np.exp(-a)) * b))
        x = x + y
    return rms(x, W["model.norm.weight"]) @ W["lm_head.weight"].T
ref = json.load(open(d + "/reference.json"))
for p in ref["prompts"]:
    lg = forward(p["prompt_bytes"])[-1]
    r = np.array(p["last_logits"])
    ids = list(p["prompt_bytes"]); out = []
    for _ in range(32):
        nx = int(np.argmax(forward(ids)[-1])); out.append(nx); ids.append(nx)
    print(repr(p["prompt"]), "max|dlogit|", float(np.abs(lg - r).max()), "greedy match", out == p["greedy_bytes"])
