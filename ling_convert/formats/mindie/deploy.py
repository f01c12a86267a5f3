"""MindIE deployment files: the service config and the HCCL rank table.

Options come from `to-mindie` (or `api.convert(..., options=...)`) and are
resolved once into a frozen `Deploy`; builders fill the data templates in
`schemas/mindie/`. Checks return problem strings so that the writer (raise) and
`validate_mindie_dir` (report) share them.

    >>> d = resolve_deploy({"variant": "plus", "world_size": 16}, cfg)   # doctest: +SKIP
    >>> d.nodes, d.npu_ids                                               # doctest: +SKIP
    (2, (0, 1, 2, 3, 4, 5, 6, 7))
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ...core import bounded, schemas
from ...core.errors import BadInputError
from .config import check_variant, infer_variant, schema_problems, thaw


@dataclass(frozen=True)
class MindieOptions:
    """to-mindie / from-mindie and the MindIE writer: the variant and where and how it deploys."""
    variant: str | None = None
    base: bool = False
    world_size: int | None = None
    npu_ids: str | None = None
    max_seq_len: int | None = None
    port: int | None = None
    servers: str | None = None
    device_ips: str | None = None
    rank_table: str | None = None
    target_dir: str | None = None
    fold_norm_head: bool = False

TEMPLATE = "mindie/service_config_template.json"
LAYOUT = "mindie/layout.json"


@dataclass(frozen=True)
class Server:
    server_id: str
    container_ip: str
    device_ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class Deploy:
    variant: str
    base: bool
    world_size: int
    npu_ids: tuple[int, ...]
    nodes: int
    servers: tuple[Server, ...]
    max_seq_len: int
    max_input_len: int
    port: int
    target_dir: str | None
    rank_table: dict | None = None      # a user-supplied table, validated; None = build one

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1

    @property
    def writes_rank_table(self) -> bool:
        # README: Ling-plus is deployed multi-node with a rank table; --servers asks for one explicitly.
        return self.variant == "plus" or bool(self.servers) or self.multi_node or self.rank_table is not None


def _bad(msg: str, fix: str) -> BadInputError:
    return BadInputError(msg, fix=fix)


def _ints(text, what: str) -> tuple[int, ...]:
    items = text if isinstance(text, (list, tuple)) else [t for t in str(text).split(",") if t.strip()]
    try:
        vals = tuple(int(str(v).strip()) for v in items)
    except ValueError:
        raise _bad(f"{what} {text!r} is not a comma-separated list of integers", f"e.g. {what} 0,1,2,3") from None
    if not vals or any(v < 0 for v in vals) or len(set(vals)) != len(vals):
        raise _bad(f"{what} {text!r} must list distinct non-negative NPU ids", f"e.g. {what} 0,1,2,3")
    return vals


def _ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        raise _bad(f"{what} {text!r} is not an IPv4 address", "use dotted IPv4, e.g. 10.0.0.1") from None


def parse_servers(text, device_ips=None) -> tuple[Server, ...]:
    """'10.0.0.1,10.0.0.2:172.17.0.2' -> servers (SERVER_IP[:CONTAINER_IP]); device IPs 'a,b;c,d' per server."""
    if not text:
        return ()
    items = text if isinstance(text, (list, tuple)) else [t for t in str(text).split(",") if t.strip()]
    groups = [g for g in str(device_ips).split(";")] if device_ips else []
    if groups and len(groups) != len(items):
        raise _bad(f"--device-ips has {len(groups)} group(s) but --servers names {len(items)} server(s)",
                   "give one ';'-separated group of comma-separated device IPs per server")
    out = []
    for i, item in enumerate(items):
        sid, _, cip = str(item).partition(":")
        dev = tuple(_ip(d, "--device-ips entry") for d in groups[i].split(",")) if groups else ()
        sid = _ip(sid, "--servers entry")
        out.append(Server(sid, _ip(cip, "--servers container IP") if cip else sid, dev))
    ids = [s.server_id for s in out]
    dup = next((s for s in ids if ids.count(s) > 1), None)
    if dup:
        raise _bad(f"--servers lists {dup} twice", "name each node once, the primary node first")
    return tuple(out)


def resolve_deploy(opts: MindieOptions, cfg: dict) -> Deploy:
    """Validate and complete the deployment options against the model config (pure; raises BadInputError)."""
    t = schemas.load(TEMPLATE)["defaults"]
    variant = check_variant(opts.variant or infer_variant(cfg))
    if opts.device_ips and not opts.servers:
        raise _bad("--device-ips needs --servers (one group of NPU IPs per server)", "add --servers IP,IP,...")
    if opts.rank_table and opts.servers:
        raise _bad("pass either --rank-table or --servers/--device-ips, not both",
                   "the rank table already names the servers")
    servers = parse_servers(opts.servers, opts.device_ips)
    user_rt = read_rank_table(Path(opts.rank_table)) if opts.rank_table else None
    if user_rt is not None and not servers:
        servers = tuple(Server(s["server_id"], s.get("container_ip", s["server_id"])) for s in user_rt["server_list"])
    npu, ws, nodes = _topology(opts, servers, user_rt, variant, t)
    for s in servers:
        if s.device_ips and len(s.device_ips) != len(npu):
            raise _bad(f"server {s.server_id} has {len(s.device_ips)} device IP(s) for {len(npu)} NPU(s)",
                       "give one device IP per NPU (hccn_tool -i N -ip -g)")
    if user_rt is not None:
        problems = rank_table_problems(user_rt, world_size=ws, cards_per_node=len(npu), placeholders_ok=True)
        if problems:
            raise BadInputError(problems[0], path=opts.rank_table,
                                fix="correct the rank table: each rank_id 0..N-1 once, N = --world-size")
    seq, inp = _seq_lens(opts, cfg, t)
    port = _port(opts.port or t["port"])
    return Deploy(variant, bool(opts.base), ws, npu, nodes, servers, seq, inp, port,
                  _target(opts.target_dir), user_rt)


def _topology(opts: MindieOptions, servers: tuple, user_rt, variant: str, t) -> tuple[tuple[int, ...], int, int]:
    """(NPU ids per node, world size, nodes): world size must be nodes x NPUs per node."""
    npu = _ints(opts.npu_ids, "--npu-ids") if opts.npu_ids not in (None, "", []) else None
    if npu is None and user_rt is not None:
        npu = tuple(int(dev["device_id"]) for dev in user_rt["server_list"][0]["device"])
    per_node = len(npu) if npu else t["cards_per_node"]
    try:
        ws = int(opts.world_size) if opts.world_size else \
            (len(servers) * per_node if servers else t["world_size"][variant])
    except (TypeError, ValueError):
        raise _bad(f"world size {opts.world_size!r} is not an integer", "pass --world-size N") from None
    if ws < 1:
        raise _bad(f"world size {ws} must be positive", "pass --world-size N with N >= 1")
    npu = npu or tuple(range(min(ws, t["cards_per_node"])))
    if ws % len(npu):
        raise _bad(f"world size {ws} is not a multiple of the {len(npu)} NPU(s) per node ({','.join(map(str, npu))})",
                   "make --world-size = nodes x cards per node, e.g. 16 for two 8-card nodes")
    nodes = ws // len(npu)
    if servers and len(servers) != nodes:
        raise _bad(f"--servers names {len(servers)} node(s) but world size {ws} / {len(npu)} NPUs per node "
                   f"needs {nodes}", "list one server per node, the primary node first")
    return npu, ws, nodes


def _seq_lens(opts: MindieOptions, cfg: dict, t) -> tuple[int, int]:
    mpe = int(cfg.get("max_position_embeddings") or t["max_seq_len"])
    seq = opts.max_seq_len
    if seq is not None and not (str(seq).isdigit() and 1 <= int(seq) <= mpe):
        raise _bad(f"--max-seq-len {seq} is outside [1, {mpe}] (the model's max_position_embeddings)",
                   f"use at most {mpe}")
    seq = int(seq) if seq is not None else min(t["max_seq_len"], mpe)
    return seq, min(t["max_input_token_len"], seq)


def _port(port) -> int:
    if not str(port).isdigit():
        raise _bad(f"--port {port!r} is not an integer", "pick e.g. 1025 (the recipe's)")
    port = int(port)
    t = schemas.load(TEMPLATE)["template"]
    fixed = {t["ServerConfig"]["interCommPort"], t["BackendConfig"]["multiNodesInferPort"]}
    ours = {port, port + 1, port + 2}
    if not 1024 <= port <= 65533 or ours & fixed:
        raise _bad(f"--port {port} must be in [1024, 65533] and, with port+1 (management) and port+2 "
                   f"(metrics), avoid the inter-node ports {sorted(fixed)}", "pick e.g. 1025 (the recipe's)")
    return port


def _target(text) -> str | None:
    if not text:
        return None
    p = PurePosixPath(str(text))
    if not p.is_absolute() or ".." in p.parts:
        raise _bad(f"--target-dir {text!r} must be an absolute container path without '..'",
                   "e.g. --target-dir /home/HwHiAiUser/Ascend/Ling_lite")
    return str(p)


# -- service config -------------------------------------------------------------

def _set(tree: dict, dotted: str, value) -> None:
    *head, last = dotted.split(".")
    node = tree
    for part in head:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value


def service_config(d: Deploy, weight_path: str) -> dict:
    """The mindie-service config.json for this deployment (template + bindings)."""
    data = schemas.load(TEMPLATE)
    cfg = copy.deepcopy(thaw(data["template"]))
    if d.multi_node:
        for dotted, value in data["multi_node_overrides"].items():
            _set(cfg, dotted, value)
    primary = d.servers[0].container_ip if (d.servers and d.multi_node) else None
    values = {"model_weight_path": d.target_dir or weight_path, "world_size": d.world_size,
              "npu_device_ids": [list(d.npu_ids)], "max_seq_len": d.max_seq_len,
              "max_input_token_len": d.max_input_len, "port": d.port, "management_port": d.port + 1,
              "metrics_port": d.port + 2}
    if primary:  # README: plus sets both listen addresses to the primary node's IP
        values.update(ip_address=primary, management_ip_address=primary)
    for key, dotted in data["bindings"].items():
        if key in values:
            _set(cfg, dotted, values[key])
    sched = cfg["BackendConfig"]["ScheduleConfig"]
    sched["maxPrefillTokens"] = max(sched["maxPrefillTokens"], d.max_input_len)
    return cfg


# -- rank table -------------------------------------------------------------------

def placeholder(text: str) -> str:
    return f"<{text}>"


def build_rank_table(d: Deploy) -> dict:
    """rank_table.json with global rank ids 0..N-1, primary node first; unknown IPs as '<...>' placeholders."""
    if d.rank_table is not None:
        return copy.deepcopy(d.rank_table)
    lay = schemas.load(LAYOUT)["rank_table"]
    servers = d.servers or tuple(Server(placeholder(f"IP of node {n}"), placeholder(f"container IP of node {n}"))
                                 for n in range(d.nodes))
    out = []
    for n, s in enumerate(servers):
        devs = [{"device_id": str(dev),
                 "device_ip": s.device_ips[i] if s.device_ips else placeholder(
                     f"{lay['device_ip_hint'].format(device_id=dev)} on node {n}"),
                 "rank_id": str(n * len(d.npu_ids) + i)} for i, dev in enumerate(d.npu_ids)]
        out.append({"device": devs, "server_id": s.server_id, "container_ip": s.container_ip})
    return {"server_count": str(len(out)), "server_list": out, "status": lay["status"], "version": lay["version"]}


def read_rank_table(path: Path) -> dict:
    """A user's rank table (e.g. from hccl_tools); its schema is checked here, its counts by the caller."""
    try:
        rt = bounded.load_json(path, "rank table")
    except BadInputError as e:
        raise BadInputError(f"cannot read rank table ({e.message})", path=path,
                            fix="pass a JSON rank_table.json") from None
    problems = schema_problems(rt, "rank_table")
    if problems:
        raise BadInputError(problems[0], path=path, fix="follow the rank table format of the Ling README")
    return rt


def rank_table_problems(rt, *, world_size: int | None = None, cards_per_node: int | None = None,
                        placeholders_ok: bool = False) -> list[str]:
    """Schema errors, duplicates, rank ids not 0..N-1, counts that disagree with the service config."""
    problems = schema_problems(rt, "rank_table")
    if problems:
        return problems
    servers = rt["server_list"]
    if int(rt["server_count"]) != len(servers):
        problems.append(f"server_count {rt['server_count']} but server_list has {len(servers)} entries")
    ranks = [dev["rank_id"] for s in servers for dev in s["device"]]
    dup = sorted({r for r in ranks if ranks.count(r) > 1}, key=int)
    if dup:
        problems.append(f"rank_id {dup[0]} is used {ranks.count(dup[0])} times; every rank_id must be unique")
    elif sorted(map(int, ranks)) != list(range(len(ranks))):
        problems.append(f"rank ids must be 0..{len(ranks) - 1}, got {sorted(map(int, ranks))}")
    ids = [s["server_id"] for s in servers]
    problems += [f"server_id {i} appears twice" for i in sorted(set(ids)) if ids.count(i) > 1 and "<" not in i]
    for s in servers:
        devs = [dev["device_id"] for dev in s["device"]]
        if len(set(devs)) != len(devs):
            problems.append(f"server {s['server_id']} lists a device_id twice")
        if cards_per_node and len(devs) != cards_per_node:
            problems.append(f"server {s['server_id']} has {len(devs)} devices but npuDeviceIds has {cards_per_node}")
    if world_size is not None and len(ranks) != world_size:
        problems.append(f"rank table has {len(ranks)} devices but worldSize is {world_size}")
    if not placeholders_ok:
        pat = re.compile(schemas.load(LAYOUT)["rank_table"]["placeholder_pattern"])
        holes = [v for s in servers for v in [s["server_id"], s.get("container_ip", "")] +
                 [dev["device_ip"] for dev in s["device"]] if pat.match(v)]
        if holes:
            problems.append(f"{len(holes)} placeholder(s) left to fill, e.g. {holes[0]}")
    return problems
