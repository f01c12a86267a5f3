"""A second, independent Ling forward used only as a test oracle.

Written apart from ``ling_convert.reference`` on purpose, from the published model formulas:
numpy float64, one token at a time, explicit loops over heads and key positions, RoPE by explicit
pair rotation, and routing by sorting. It takes a whole state dict; it is slow and meant for tiny
configs only.

    >>> out = forward(config, state_dict, [[1, 2, 3]])  # doctest: +SKIP
    >>> out["logits"].shape  # doctest: +SKIP
    (1, 3, 97)
"""

from __future__ import annotations

import math

import numpy as np

V1 = "BailingMoeForCausalLM"
V2 = "BailingMoeV2ForCausalLM"


def _spec(config: dict) -> dict:
    """Read the config into plain numbers, independently of the package's own parser."""
    c = config
    heads = c["num_attention_heads"]
    head_dim = c["head_dim"] if c.get("head_dim") else c["hidden_size"] // heads
    is_v2 = c["architectures"][0] == V2
    if not is_v2:
        rot = head_dim
    elif c.get("rotary_dim"):
        rot = c["rotary_dim"]
    elif c.get("partial_rotary_factor") is not None:
        rot = int(head_dim * c["partial_rotary_factor"])
    else:
        rot = head_dim
    scaling = c.get("rope_scaling") or None
    kind = None
    if scaling:
        kind = scaling["rope_type"] if "rope_type" in scaling else scaling.get("type")
    return dict(
        v2=is_v2, hidden=c["hidden_size"], layers=c["num_hidden_layers"], heads=heads,
        kv_heads=c["num_key_value_heads"], head_dim=head_dim, rot=rot,
        eps=c.get("rms_norm_eps", 1e-5), theta=c.get("rope_theta", 10000.0), scaling=scaling, kind=kind,
        experts=c["num_experts"], topk=c["num_experts_per_tok"], shared=c.get("num_shared_experts") or 0,
        dense_layers=c.get("first_k_dense_replace") or 0, norm_topk=c.get("norm_topk_prob", True),
        norm_head=(not is_v2) and c.get("norm_head", False), tied=c.get("tie_word_embeddings", False),
        qkv_bias=c.get("use_qkv_bias", False), out_bias=c.get("use_bias", True),
        qk_norm=is_v2 and c.get("use_qk_norm", False), n_group=c.get("n_group", 1),
        topk_group=c.get("topk_group", 1), rsf=c.get("routed_scaling_factor", 1.0),
        mtp_layers=c.get("num_nextn_predict_layers") or 0,
    )


def _pair_frequencies(s: dict) -> tuple[list[float], float]:
    """Angular frequency of each rotated pair, and the amplitude applied to cos and sin."""
    rot, theta = s["rot"], s["theta"]
    plain = [theta ** (-(2.0 * i) / rot) for i in range(rot // 2)]
    if s["kind"] != "yarn":
        return plain, 1.0
    sc = s["scaling"]
    factor = float(sc["factor"])
    orig = sc.get("original_max_position_embeddings") or 4096
    fast, slow = sc.get("beta_fast") or 32, sc.get("beta_slow") or 1
    m, m_all = sc.get("mscale", 1), sc.get("mscale_all_dim", 0)

    def dim_for(turns):  # pair index whose period fits `turns` turns in the original window
        return rot * math.log(orig / (turns * 2 * math.pi)) / (2 * math.log(theta))

    lo, hi = max(math.floor(dim_for(fast)), 0), min(math.ceil(dim_for(slow)), rot - 1)
    if hi == lo:
        hi = hi + 0.001
    freqs = []
    for i, f in enumerate(plain):
        t = min(max((i - lo) / (hi - lo), 0.0), 1.0)  # 0: keep f, 1: f / factor
        freqs.append(f * (1 - t) + (f / factor) * t)

    def amp(x):
        return 0.1 * x * math.log(factor) + 1.0 if factor > 1 else 1.0

    return freqs, amp(m) / amp(m_all)


def _rotate(vec: np.ndarray, pos: int, freqs: list[float], amp: float, s: dict) -> np.ndarray:
    """Rotate pairs (i, i + rot/2) of one head vector by pos * freq_i; later dims untouched."""
    out = vec.copy()
    half = s["rot"] // 2
    p = pos / float(s["scaling"]["factor"]) if s["kind"] == "linear" else float(pos)
    for i in range(half):
        c, sn = amp * math.cos(p * freqs[i]), amp * math.sin(p * freqs[i])
        a, b = vec[i], vec[i + half]
        out[i] = a * c - b * sn
        out[i + half] = b * c + a * sn
    return out


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / math.sqrt(float(np.dot(x, x)) / x.size + eps) * w


def _silu(z: np.ndarray) -> np.ndarray:
    return z / (1.0 + np.exp(-z))


def _mlp(x: np.ndarray, sd: dict, prefix: str) -> np.ndarray:
    g = sd[prefix + "gate_proj.weight"] @ x
    u = sd[prefix + "up_proj.weight"] @ x
    return sd[prefix + "down_proj.weight"] @ (_silu(g) * u)


def _attention(xs: list, sd: dict, p: str, s: dict, freqs, amp) -> list:
    """Causal GQA attention over a list of normed token vectors, one query at a time."""
    d, nh, nkv = s["head_dim"], s["heads"], s["kv_heads"]
    q, k, v = [], [], []
    for pos, x in enumerate(xs):
        y = sd[p + "attention.query_key_value.weight"] @ x
        if s["qkv_bias"]:
            y = y + sd[p + "attention.query_key_value.bias"]
        qh = [y[h * d:(h + 1) * d] for h in range(nh)]
        kh = [y[(nh + g) * d:(nh + g + 1) * d] for g in range(nkv)]
        vh = [y[(nh + nkv + g) * d:(nh + nkv + g + 1) * d] for g in range(nkv)]
        if s["qk_norm"]:
            qh = [_rms(t, sd[p + "attention.query_layernorm.weight"], s["eps"]) for t in qh]
            kh = [_rms(t, sd[p + "attention.key_layernorm.weight"], s["eps"]) for t in kh]
        q.append([_rotate(t, pos, freqs, amp, s) for t in qh])
        k.append([_rotate(t, pos, freqs, amp, s) for t in kh])
        v.append(vh)
    per_kv = nh // nkv
    outs = []
    for i in range(len(xs)):
        heads_out = []
        for h in range(nh):
            g = h // per_kv
            logits = [float(np.dot(q[i][h], k[j][g])) / math.sqrt(d) for j in range(i + 1)]
            top = max(logits)
            ex = [math.exp(z - top) for z in logits]
            total = sum(ex)
            acc = np.zeros(d)
            for j in range(i + 1):
                acc += (ex[j] / total) * v[j][g]
            heads_out.append(acc)
        o = sd[p + "attention.dense.weight"] @ np.concatenate(heads_out)
        if s["out_bias"]:
            o = o + sd[p + "attention.dense.bias"]
        outs.append(o)
    return outs


def _choose_v1(logits: np.ndarray, s: dict) -> tuple[list, list]:
    ex = np.exp(logits - logits.max())
    probs = ex / ex.sum()
    order = sorted(range(len(probs)), key=lambda e: -probs[e])
    chosen = order[:s["topk"]]
    w = [probs[e] for e in chosen]
    if s["topk"] > 1 and s["norm_topk"]:
        total = sum(w)
        w = [x / total for x in w]
    return chosen, w


def _choose_v2(logits: np.ndarray, bias: np.ndarray, s: dict) -> tuple[list, list]:
    score = 1.0 / (1.0 + np.exp(-logits))
    biased = score + bias
    per = s["experts"] // s["n_group"]
    group_val = []
    for g in range(s["n_group"]):
        members = sorted((biased[e] for e in range(g * per, (g + 1) * per)), reverse=True)
        group_val.append(members[0] + members[1])
    groups = sorted(range(s["n_group"]), key=lambda g: -group_val[g])[:s["topk_group"]]
    candidates = [e for g in groups for e in range(g * per, (g + 1) * per)]
    chosen = sorted(candidates, key=lambda e: -biased[e])[:s["topk"]]
    w = [score[e] for e in chosen]
    if s["topk"] > 1:
        total = sum(w) + 1e-20
        w = [x / total for x in w]
    return chosen, [x * s["rsf"] for x in w]


def _moe(x: np.ndarray, sd: dict, p: str, s: dict) -> np.ndarray:
    logits = sd[p + "mlp.gate.weight"] @ x
    if s["v2"]:
        chosen, w = _choose_v2(logits, sd[p + "mlp.gate.expert_bias"], s)
    else:
        chosen, w = _choose_v1(logits, s)
    y = np.zeros_like(x)
    for e, weight in zip(chosen, w):
        y += weight * _mlp(x, sd, f"{p}mlp.experts.{e}.")
    if s["shared"]:
        y += _mlp(x, sd, p + "mlp.shared_experts.")
    return y


def _block(xs: list, sd: dict, p: str, s: dict, freqs, amp, dense: bool) -> list:
    normed = [_rms(x, sd[p + "input_layernorm.weight"], s["eps"]) for x in xs]
    xs = [x + a for x, a in zip(xs, _attention(normed, sd, p, s, freqs, amp))]
    out = []
    for x in xs:
        n = _rms(x, sd[p + "post_attention_layernorm.weight"], s["eps"])
        out.append(x + (_mlp(n, sd, p + "mlp.") if dense else _moe(n, sd, p, s)))
    return out


def _head_matrix(sd: dict, s: dict) -> np.ndarray:
    w = sd["model.word_embeddings.weight"] if s["tied"] else sd["lm_head.weight"]
    if s["norm_head"]:
        w = w.copy()
        for col in range(w.shape[1]):
            w[:, col] = w[:, col] / (math.sqrt(float(np.sum(w[:, col] ** 2))) + 1e-7)
    return w


def _one_sequence(ids: list, sd: dict, s: dict, layers, mtp: bool):
    freqs, amp = _pair_frequencies(s)
    emb = sd["model.word_embeddings.weight"]
    xs = [emb[t].copy() for t in ids]
    for l in range(layers if layers is not None else s["layers"]):
        xs = _block(xs, sd, f"model.layers.{l}.", s, freqs, amp, dense=l < s["dense_layers"])
    hidden = np.stack(xs)
    if layers is not None:
        return hidden, None, []
    head = _head_matrix(sd, s)
    prev = [_rms(x, sd["model.norm.weight"], s["eps"]) for x in xs]
    logits = np.stack([head @ x for x in prev])
    mtp_out = []
    shifted = list(ids)
    for j in range(s["mtp_layers"] if mtp else 0):
        shifted = shifted[1:] + [0]
        p = f"model.layers.{s['layers'] + j}."
        xs = []
        for t, hprev in zip(shifted, prev):
            e = _rms(emb[t], sd[p + "enorm.weight"], s["eps"])
            hn = _rms(hprev, sd[p + "hnorm.weight"], s["eps"])
            xs.append(sd[p + "eh_proj.weight"] @ np.concatenate([e, hn]))
        xs = _block(xs, sd, p, s, freqs, amp, dense=False)
        prev = [_rms(x, sd[p + "final_layernorm.weight"], s["eps"]) for x in xs]
        mtp_out.append(np.stack([head @ x for x in prev]))
    return hidden, logits, mtp_out


def forward(config: dict, state_dict: dict, tokens, *, layers: int | None = None, mtp: bool = False) -> dict:
    """Return {"logits": [B,T,V] or None, "hidden": [B,T,H], "mtp_logits": [[B,T,V], ...]} as float64."""
    s = _spec(config)
    sd = {k: np.asarray(v, dtype=np.float64) for k, v in state_dict.items()}
    batch = np.asarray(tokens).reshape(-1, np.asarray(tokens).shape[-1]).tolist()
    runs = [_one_sequence(ids, sd, s, layers, mtp) for ids in batch]
    hidden = np.stack([r[0] for r in runs])
    logits = None if layers is not None else np.stack([r[1] for r in runs])
    n_mtp = len(runs[0][2])
    mtp_logits = [np.stack([r[2][j] for r in runs]) for j in range(n_mtp)]
    return {"logits": logits, "hidden": hidden, "mtp_logits": mtp_logits}
