"""Routes of the hub stand-in (see hub_standin.py): what each real client calls.

Hugging Face (huggingface_hub 2.4, Xet off): repo create, revision info, tree, preupload,
LFS batch + basic PUT, NDJSON commit, branch, resolve (HEAD/GET with Range).
ModelScope (modelscope 1.40 / modelscope-hub 0.5, legacy /api/v1): create, info, revisions,
repo/files, LFS batch + PUT, JSON commit, repo download. Bodies use the {Code, Data, Success,
Message, RequestId} envelope.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from urllib.parse import unquote

from hub_standin import HF_DEFAULT, MS_DEFAULT, _Handler, git_oid, lfs_pointer

HF_REPO = r"(?P<repo>[^/]+/[^/]+)"


def _safe_path(p: str) -> bool:
    return bool(p) and not p.startswith("/") and ".." not in p.split("/")


# -- Hugging Face routes ---------------------------------------------------------

def hf_create(h: _Handler, g, q, body):
    if not h._writable(None):
        return
    d = json.loads(body)
    repo_id = f"{d.get('organization') or 'user'}/{d['name']}"
    private = bool(d.get("private")) or d.get("visibility") == "private"
    if not h.hub.create(repo_id, private, HF_DEFAULT):
        # The Hub still sends the url with a 409; `create_repo(exist_ok=True)` reads it.
        return h._json(409, {"error": "You already created this model repo", "url": f"{h.hub.url}/{repo_id}"})
    h._json(200, {"url": f"{h.hub.url}/{repo_id}", "name": repo_id})


def hf_info(h: _Handler, g, q, body):
    repo = h._readable(g["repo"])
    if repo is None:
        return
    got = h.hub.head(g["repo"], unquote(g.get("rev") or repo.default))
    if got is None:
        return h._hf_error(404, "RevisionNotFound", "Invalid rev id")
    cid, tree = got
    h._json(200, {"id": g["repo"], "modelId": g["repo"], "sha": h.hub.fake_commit.get(g["repo"], cid),
                  "private": repo.private,
                  "siblings": [{"rfilename": p} for p in sorted(tree)]})


def hf_tree(h: _Handler, g, q, body):
    repo = h._readable(g["repo"])
    if repo is None:
        return
    got = h.hub.head(g["repo"], unquote(g["rev"]))
    if got is None:
        return h._hf_error(404, "RevisionNotFound", "Invalid rev id")
    items = []
    for p, e in sorted(got[1].items()):
        item = {"type": "file", "oid": e.oid, "size": e.size, "path": p}
        if e.lfs:
            item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": len(lfs_pointer(e.sha256, e.size))}
        items.append(item)
    for bogus in h.hub.extra_listing.get(g["repo"], []):
        items.append({"type": "file", "oid": git_oid(b"x"), "size": 1, "path": bogus})
    h._json(200, items)


def hf_preupload(h: _Handler, g, q, body):
    if not h._writable(g["repo"]):
        return
    got = h.hub.head(g["repo"], unquote(g["rev"]))
    tree = got[1] if got else {}
    out = []
    for f in json.loads(body)["files"]:
        e = tree.get(f["path"])
        out.append({"path": f["path"], "shouldIgnore": False,
                    "uploadMode": "lfs" if h.hub.is_lfs(f["path"], f["size"]) else "regular",
                    "oid": (e.sha256 if e.lfs else e.oid) if e else None})
    h._json(200, {"files": out, "commitOid": got[0] if got else None})


def lfs_batch(h: _Handler, g, q, body, ms: bool = False):
    if not h._writable(g["repo"], ms):
        return
    objs = []
    for o in json.loads(body)["objects"]:
        if o["oid"] in h.hub.blobs:
            objs.append({"oid": o["oid"], "size": o["size"]}) if not ms else None
        else:
            objs.append({"oid": o["oid"], "size": o["size"], "authenticated": True,
                         "actions": {"upload": {"href": f"{h.hub.url}/__lfs/{o['oid']}?sig={h.hub.sign(o['oid'])}"}}})
    payload = {"transfer": "basic", "objects": objs}
    h._ms(payload) if ms else h._json(200, payload)


def lfs_put(h: _Handler, g, q, body):
    # Like a presigned storage URL: the signature, not a token, authorises the PUT.
    if q.get("sig") != h.hub.sign(g["oid"]):
        return h._json(403, {"error": "bad signature"})
    if hashlib.sha256(body).hexdigest() != g["oid"]:
        return h._json(400, {"error": "sha256 mismatch", "Code": 400})
    with h.hub.lock:
        h.hub.blobs[g["oid"]] = body
    h._json(200, {})


def hf_commit(h: _Handler, g, q, body):
    if not h._writable(g["repo"]):
        return
    branch = unquote(g["rev"])
    if branch not in h.hub.repos[g["repo"]].branches:
        return h._hf_error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
    adds, deletes, message, parent = {}, [], "", None
    for line in body.splitlines():
        item = json.loads(line)
        v = item["value"]
        if item["key"] == "header":
            message, parent = v.get("summary", ""), v.get("parentCommit")
            continue
        if not _safe_path(v["path"]):
            return h._hf_error(400, "BadRequest", f"invalid path {v['path']!r}")
        if item["key"] == "file":
            adds[v["path"]] = h.hub.regular(base64.b64decode(v["content"]))
        elif item["key"] == "lfsFile":
            e = h.hub.lfs_entry(v["oid"], v["size"])
            if e is None:
                return h._hf_error(422, "BadRequest", f"LFS object {v['oid']} was never uploaded")
            adds[v["path"]] = e
        elif item["key"] in ("deletedFile", "deletedFolder"):
            deletes.append(v["path"])
    head = h.hub.repos[g["repo"]].branches[branch]
    if parent and not head.startswith(parent):
        return h._hf_error(412, "PreconditionFailed", "parent commit is not the head")
    cid, pr = h.hub.apply(g["repo"], branch, adds, deletes, message, create_pr=q.get("create_pr") == "1")
    h._json(200, {"commitUrl": f"{h.hub.url}/{g['repo']}/commit/{cid}", "commitOid": cid,
                  "pullRequestUrl": f"{h.hub.url}/{g['repo']}/discussions/{pr.rsplit('/', 1)[1]}" if pr else None})


def hf_branch(h: _Handler, g, q, body):
    if not h._writable(g["repo"]):
        return
    repo = h.hub.repos[g["repo"]]
    name = unquote(g["name"])
    if name in repo.branches:
        return h._hf_error(409, "Conflict", "Reference already exists")
    start = (json.loads(body or b"{}") or {}).get("startingPoint") or repo.default
    got = h.hub.head(g["repo"], start)
    if got is None:
        return h._hf_error(404, "RevisionNotFound", "Invalid starting point")
    with h.hub.lock:
        repo.branches[name] = got[0]
    h._json(200, {})


def hf_resolve(h: _Handler, g, q, body):
    if h._readable(g["repo"]) is None:
        return
    got = h.hub.head(g["repo"], unquote(g["rev"]))
    if got is None:
        return h._hf_error(404, "RevisionNotFound", "Invalid rev id")
    e = got[1].get(unquote(g["path"]))
    if e is None:
        return h._hf_error(404, "EntryNotFound", "Entry not found")
    headers = {"X-Repo-Commit": got[0], "ETag": f'"{e.sha256 if e.lfs else e.oid}"'}
    if e.lfs:
        headers.update({"X-Linked-Etag": f'"{e.sha256}"', "X-Linked-Size": str(e.size)})
    h._send_file(e, headers)


# -- ModelScope routes ---------------------------------------------------------------

def ms_create(h: _Handler, g, q, body):
    if not h._writable(None, ms=True):
        return
    d = json.loads(body)
    repo_id = f"{d['Path']}/{d['Name']}"
    if not h.hub.create(repo_id, int(d.get("Visibility", 5)) == 1, MS_DEFAULT):
        return h._ms(None, 409, "model already exists")
    h._ms({"Path": d["Path"], "Name": d["Name"]})


def ms_info(h: _Handler, g, q, body):
    repo = h._readable(g["repo"], ms=True)
    if repo is not None:
        owner, name = g["repo"].split("/")
        h._ms({"Path": owner, "Name": name, "Visibility": 1 if repo.private else 5})


def ms_revisions(h: _Handler, g, q, body):
    repo = h._readable(g["repo"], ms=True)
    if repo is not None:
        branches = [{"Revision": b, "CreatedAt": 0, "CommitId": h.hub.fake_commit.get(g["repo"], c)}
                    for b, c in sorted(repo.branches.items())]
        h._ms({"RevisionMap": {"Branches": branches, "Tags": []}})


def ms_files(h: _Handler, g, q, body):
    if h._readable(g["repo"], ms=True) is None:
        return
    got = h.hub.head(g["repo"], q.get("Revision") or MS_DEFAULT)
    if got is None:
        return h._ms(None, 404, "revision not found")
    files = [{"Path": p, "Name": p.rsplit("/", 1)[-1], "Type": "blob", "Size": e.size, "Sha256": e.sha256,
              "IsLFS": e.lfs, "Revision": got[0]} for p, e in sorted(got[1].items())]
    files += [{"Path": b, "Name": b, "Type": "blob", "Size": 1, "Sha256": hashlib.sha256(b"x").hexdigest(),
               "IsLFS": False, "Revision": got[0]} for b in h.hub.extra_listing.get(g["repo"], [])]
    h._ms({"Files": files})


def ms_commit(h: _Handler, g, q, body):
    if not h._writable(g["repo"], ms=True):
        return
    branch = unquote(g["rev"])
    if branch not in h.hub.repos[g["repo"]].branches:
        return h._ms(None, 404, f"branch {branch} not found")
    d = json.loads(body)
    adds, deletes = {}, []
    for a in d["actions"]:
        if not _safe_path(a["path"]):
            return h._ms(None, 400, f"invalid path {a['path']!r}")
        if a["action"] == "delete":
            deletes.append(a["path"])
        elif a.get("type") == "lfs":
            e = h.hub.lfs_entry(a["sha256"], int(a["size"]))
            if e is None:
                return h._ms(None, 400, f"LFS object {a['sha256']} was never uploaded")
            adds[a["path"]] = e
        else:
            adds[a["path"]] = h.hub.regular(base64.b64decode(a.get("content") or ""))
    cid, _ = h.hub.apply(g["repo"], branch, adds, deletes, d.get("commit_message", ""))
    h._ms({"CommitId": cid})


def ms_download(h: _Handler, g, q, body):
    if h._readable(g["repo"], ms=True) is None:
        return
    got = h.hub.head(g["repo"], q.get("Revision") or MS_DEFAULT)
    e = got[1].get(q.get("FilePath", "")) if got else None
    if e is None:
        return h._ms(None, 404, "file not found")
    h._send_file(e, {})


def _r(method: str, pattern: str, fn) -> tuple:
    return method, re.compile(pattern + r"$"), fn


ROUTES = [
    _r("POST", r"/api/repos/create", hf_create),
    _r("POST", r"/api/validate-yaml", lambda h, g, q, b: h._json(200, {})),   # README.md metadata check
    _r("GET", rf"/api/models/{HF_REPO}(?:/revision/(?P<rev>[^/]+))?", hf_info),
    _r("GET", rf"/api/models/{HF_REPO}/tree/(?P<rev>[^/]+)(?:/.*)?", hf_tree),
    _r("POST", rf"/api/models/{HF_REPO}/preupload/(?P<rev>[^/]+)", hf_preupload),
    _r("POST", rf"/{HF_REPO}\.git/info/lfs/objects/batch", lfs_batch),
    _r("PUT", r"/__lfs/(?P<oid>[0-9a-f]{64})", lfs_put),
    _r("POST", rf"/api/models/{HF_REPO}/commit/(?P<rev>[^/]+)", hf_commit),
    _r("POST", rf"/api/models/{HF_REPO}/branch/(?P<name>[^/]+)", hf_branch),
    _r("GET", rf"/{HF_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", hf_resolve),
    _r("POST", r"/api/v1/models", ms_create),
    _r("GET", rf"/api/v1/models/{HF_REPO}", ms_info),
    _r("GET", rf"/api/v1/models/{HF_REPO}/revisions", ms_revisions),
    _r("GET", rf"/api/v1/models/{HF_REPO}/repo/files", ms_files),
    _r("POST", rf"/api/v1/repos/models/{HF_REPO}/info/lfs/objects/batch",
       lambda h, g, q, b: lfs_batch(h, g, q, b, ms=True)),
    _r("POST", rf"/api/v1/repos/models/{HF_REPO}/commit/(?P<rev>[^/]+)", ms_commit),
    _r("GET", rf"/api/v1/models/{HF_REPO}/repo", ms_download),
]
