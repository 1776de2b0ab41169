"""Find a weights file on this machine, or fetch it once, or say exactly how to get it.

Lookup order: an explicit path > $BFR_WEIGHTS_DIR/<file> > the file bundled in the package >
the download cache ($BFR_CACHE, else ~/.cache/bfr) > Hugging Face Hub > public URL.
Downloads never run when offline (HF_HUB_OFFLINE=1 or BFR_OFFLINE=1) or when a one-second
connection test fails, so a machine without network gets a clear error at once instead of
a hang in retry loops.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from bfr.errors import WeightsUnavailableError
from bfr.paths import COMPACT_WEIGHTS_DIR
from bfr.weights.catalog import WeightSpec, get_spec

CONNECT_TIMEOUT_S = 1.0
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation, not for the whole file
_TRUE = {"1", "true", "yes", "on"}


class ChecksumError(WeightsUnavailableError):
    """A file's sha256 is not the published one: a corrupt download or a changed upstream file."""


def cache_dir() -> Path:
    """Where downloaded weights are kept: $BFR_CACHE, else $XDG_CACHE_HOME/bfr, else ~/.cache/bfr."""
    if os.environ.get("BFR_CACHE"):
        return Path(os.environ["BFR_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "bfr"


def offline() -> tuple[bool, str]:
    """Whether downloads are switched off, and by which variable (read at call time)."""
    for var in ("BFR_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return True, f"{var}={os.environ[var]}"
    return False, ""


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: str | Path, expected: str | None) -> None:
    """Raise ChecksumError when `expected` is known and the file does not match it."""
    if expected is None:
        return
    got = sha256_of(path)
    if got.lower() != expected.lower():
        raise ChecksumError(
            f"{path}: sha256 is {got}, expected {expected}. The file is corrupt or not the published one; "
            "delete it and fetch it again."
        )


# --- where the file may already be -------------------------------------------------------


def _local_candidates(spec: WeightSpec) -> list[Path]:
    out = []
    if os.environ.get("BFR_WEIGHTS_DIR"):
        out.append(Path(os.environ["BFR_WEIGHTS_DIR"]).expanduser() / spec.filename)
    if spec.bundled:
        out.append(COMPACT_WEIGHTS_DIR / spec.filename)
    out.append(cache_dir() / "weights" / spec.filename)
    return out


def _hub_cached(spec: WeightSpec) -> Path | None:
    if not spec.hub_repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec.hub_repo, spec.hub_filename or spec.filename, revision=spec.hub_revision)
    return Path(found) if isinstance(found, str) else None


def find_local(spec: WeightSpec) -> Path | None:
    """The first copy already on this machine, without touching the network."""
    for p in _local_candidates(spec):
        if p.is_file():
            return p
    return _hub_cached(spec)


# --- network ------------------------------------------------------------------------------

_reach_memo: dict[tuple[str, int], tuple[float, bool]] = {}


def _can_connect(host: str, port: int, timeout: float) -> bool:
    """One TCP connection attempt, bounded by `timeout` even when DNS hangs."""
    memo = _reach_memo.get((host, port))
    if memo and time.monotonic() - memo[0] < 60:
        return memo[1]
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout)
    ok = bool(result and result[0])
    _reach_memo[(host, port)] = (time.monotonic(), ok)
    return ok


def reachable(url: str) -> bool:
    """Quick check that the server behind `url` (or the configured HTTPS proxy) answers."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return True
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return bool(parts.hostname) and _can_connect(parts.hostname, port, CONNECT_TIMEOUT_S)


def _hub_url() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _how_to_place(spec: WeightSpec, option: str | None = None) -> str:
    env_dir = os.environ.get("BFR_WEIGHTS_DIR")
    target = f"{env_dir}/{spec.filename}" if env_dir else f"$BFR_WEIGHTS_DIR/{spec.filename}"
    cached = cache_dir() / "weights" / spec.filename
    if option == "":  # no command-line option gives this file
        return f"put it at {target} or {cached}"
    if option:
        return f"put it at {target} or {cached}, or pass {option} PATH"
    return (f"put it at {target} or {cached}, or pass weights={{'{spec.name}': PATH}} to bfr.load (command line: "
            f"--weights {spec.name}=PATH)")


def _unavailable(spec: WeightSpec, why: str, option: str | None = None) -> WeightsUnavailableError:
    """The error naming the file, why it could not be had (also kept as ``.why``) and how to get it."""
    src = spec.remote
    if src:
        where = f"Download it from {src} and {_how_to_place(spec, option)}."
    else:
        steps = (f"make it with `{spec.made_by}`, then " if spec.made_by else "") + _how_to_place(spec, option)
        where = steps[:1].upper() + steps[1:] + "."  # the why says already that it has no public source
    err = WeightsUnavailableError(f"Weights {spec.name!r} ({spec.filename}) are not on this machine: {why}. {where}")
    err.why = why
    return err


_dest_locks: dict[Path, threading.Lock] = {}
_dest_locks_guard = threading.Lock()
STALE_PART_S = 3600  # a .part file this old was left by a killed download


def _name_hash(filename: str) -> str | None:
    """The sha256 prefix that torchvision-style names carry (``vgg16-397923af.pth``), or None."""
    m = re.search(r"-([0-9a-f]{8,64})\.pth$", filename)
    return m.group(1) if m else None


def download_url(url: str, dest: Path, sha256: str | None = None, progress: bool = True,
                 sha256_prefix: str | None = None) -> Path:
    """Stream `url` to `dest` (atomically, via a .part file), checking the length the server announced and
    sha256 (or its prefix) when known. Threads asking for one file wait for the first download instead of
    repeating it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _dest_locks_guard:
        lock = _dest_locks.setdefault(dest.resolve(), threading.Lock())
    with lock:
        if dest.is_file():  # another thread fetched it while this one waited
            return dest
        for old in dest.parent.glob(f"{dest.name}.*.part"):
            if time.time() - old.stat().st_mtime > STALE_PART_S:
                old.unlink(missing_ok=True)
        return _download(url, dest, sha256, progress, sha256_prefix)


def _download(url: str, dest: Path, sha256: str | None, progress: bool, sha256_prefix: str | None) -> Path:
    part = dest.with_name(f"{dest.name}.{os.getpid()}.{threading.get_ident()}.part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(part, "wb") as f:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = _progress_bar(total, dest.name) if progress else None
            got = 0
            while block := resp.read(1 << 20):
                f.write(block)
                h.update(block)
                got += len(block)
                if bar is not None:
                    bar.update(len(block))
            if bar is not None:
                bar.close()
        if total is not None and got != total:  # http.client does not raise when the peer closes early
            raise OSError(f"incomplete download: {got} of {total} bytes")
        if sha256 is not None and h.hexdigest().lower() != sha256.lower():
            raise ChecksumError(
                f"{url}: downloaded file has sha256 {h.hexdigest()}, expected {sha256}; it was not kept."
            )
        if sha256_prefix is not None and not h.hexdigest().startswith(sha256_prefix.lower()):
            raise ChecksumError(f"{url}: downloaded file has sha256 {h.hexdigest()}, which does not start with the "
                                f"{sha256_prefix} its name promises; it was not kept.")
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return dest


def _progress_bar(total: int | None, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, file=sys.stderr, disable=not sys.stderr.isatty())


# --- the entry points ---------------------------------------------------------------------


def resolve(
    weights: str | WeightSpec,
    path: str | Path | None = None,
    *,
    download: bool = True,
    verify: bool = False,
    option: str | None = None,
) -> Path:
    """Path of a weights file, fetching it into the cache if allowed and needed.

    `path` (a file, or a folder holding the file) wins over everything and must exist.
    `verify` re-checks the sha256 of a file found locally (downloads are always checked).
    Raises WeightsUnavailableError, naming the file and how to get it, when nothing works;
    `option`: the command-line option that gives this file (default `--weights NAME=PATH`; "" for none).
    """
    spec = get_spec(weights) if isinstance(weights, str) else weights
    if path is not None:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / spec.filename
        if not p.is_file():
            raise WeightsUnavailableError(f"Weights file {p} for {spec.name!r} does not exist.")
        if verify:
            verify_sha256(p, spec.sha256)
        return p

    found = find_local(spec)
    if found is not None:
        if verify:
            verify_sha256(found, spec.sha256)
        return found

    if spec.remote is None:
        raise _unavailable(spec, "it is not bundled in this install and has no public source", option)
    if not download:
        raise _unavailable(spec, "downloading was not allowed", option)
    is_file_url = spec.url is not None and spec.url.startswith("file:")
    off, var = offline()
    if off and not is_file_url:
        raise _unavailable(spec, f"downloads are off ({var})", option)

    if spec.hub_repo:
        hub_failure = f"{_hub_url()} is unreachable"
        if reachable(_hub_url()):
            from huggingface_hub import hf_hub_download

            try:
                got = hf_hub_download(spec.hub_repo, spec.hub_filename or spec.filename, revision=spec.hub_revision)
            except Exception as e:  # the hub raises many kinds; all mean "not available now"
                hub_failure = f"the Hugging Face download failed ({type(e).__name__}: {e})"
            else:
                verify_sha256(got, spec.sha256)
                return Path(got)
        if not spec.url:
            raise _unavailable(spec, hub_failure, option)
    if not reachable(spec.url):
        host = urllib.parse.urlsplit(spec.url).hostname
        raise _unavailable(spec, f"{host} is unreachable (no network?)", option)
    try:
        return download_url(spec.url, cache_dir() / "weights" / spec.filename, spec.sha256,
                            sha256_prefix=_name_hash(spec.filename))
    except ChecksumError:
        raise
    except OSError as e:  # URLError, timeouts, HTTP errors, disk full
        raise _unavailable(spec, f"the download failed ({e})", option) from e


def resolve_all(paths: dict[str, str | Path | None], options: dict[str, str] | None = None) -> dict[str, Path]:
    """``resolve`` for several weights (catalog name → given path or None), before anything is built: every file
    that cannot be had is named in one error, not the first of them after minutes of loading."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for name, path in paths.items():
        try:
            found[name] = resolve(name, path, option=(options or {}).get(name))
        except WeightsUnavailableError as e:
            missing.append(str(e))
    if len(missing) == 1:
        raise WeightsUnavailableError(missing[0])
    if missing:
        listed = " ".join(f"({k}) {m}" for k, m in enumerate(missing, 1))
        raise WeightsUnavailableError(f"{len(missing)} weights files are missing: {listed}")  # one line
    return found


# Third-party networks bfr can do without (facexlib's, torchvision's): found in their own folders or bfr's,
# else fetched where downloads are on; a failed fetch is remembered, not retried on every photo.
_failed: dict[str, tuple[float, str]] = {}  # catalog name → (when, why) of its last failed fetch
RETRY_AFTER_S = 300
_unreadable: dict[Path, tuple[tuple[int, int], str]] = {}  # file → ((size, mtime), why) of a failed read


def mark_unreadable(path: str | Path, why: str) -> None:
    """Remember that a found file could not be read, so it is not read again (on every photo) until it changes."""
    st = Path(path).stat()
    _unreadable[Path(path)] = ((st.st_size, st.st_mtime_ns), why)


def _unreadable_why(path: Path) -> str | None:
    if (known := _unreadable.get(path)) is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return known[1] if known[0] == (st.st_size, st.st_mtime_ns) else None


def find_in(spec: WeightSpec, dirs: list[Path]) -> Path | None:
    """The file in one of ``dirs`` (the network's own folders), else where bfr keeps weights, else None."""
    for folder in dirs:
        if (Path(folder) / spec.filename).is_file():
            return Path(folder) / spec.filename
    return find_local(spec)


def optional_status(spec: WeightSpec, dirs: list[Path]) -> tuple[bool, str]:
    """(True, "found at …" or "downloads from … on first use") or (False, why not). Never downloads."""
    found = find_in(spec, dirs)
    if found is not None:
        why = _unreadable_why(found)
        return (False, why) if why else (True, f"found at {found}")
    if spec.name in _failed and time.monotonic() - _failed[spec.name][0] < RETRY_AFTER_S:
        return False, _failed[spec.name][1]
    return available(spec)


def how_to_get(spec: WeightSpec, places: list[str | Path]) -> str:
    """One sentence: where to put an optional network's file by hand (its own ``places``, then bfr's)."""
    places = [str(d) for d in places] + ["$BFR_WEIGHTS_DIR", str(cache_dir() / "weights")]
    hint = ", or run where downloads are on." if offline()[0] else "."
    return f"Put {spec.filename} ({spec.url}) in {', '.join(places[:-1])} or {places[-1]}{hint}"


def unavailable_error(what: str, why: str, spec: WeightSpec, places: list[str | Path],
                      advice: str = "") -> WeightsUnavailableError:
    """The error of an optional network that cannot be had: why, where to put its file by hand, what else to do
    (``advice``); ``.why`` keeps the reason alone, for callers that fall back and say why."""
    err = WeightsUnavailableError(f"{what} is unavailable: {why}. {how_to_get(spec, places)}" +
                                  (f" {advice}" if advice else ""))
    err.why = why
    return err


def fetch_optional(spec: WeightSpec, dirs: list[Path]) -> tuple[Path | None, str]:
    """(path, "") when the file is here or was just fetched into bfr's cache, else (None, a short why not).

    Never raises for a missing file: callers fall back or turn ``why`` into their own error."""
    ok, how = optional_status(spec, dirs)
    if not ok:
        return None, how
    if how.startswith("found at "):
        return Path(how.removeprefix("found at ")), ""
    try:
        return resolve(spec, option=""), ""
    except WeightsUnavailableError as e:
        why = getattr(e, "why", str(e))
        _failed[spec.name] = (time.monotonic(), why)
        return None, why


def available(weights: str | WeightSpec) -> tuple[bool, str]:
    """Whether the weights can be used now, and why, without downloading anything.

    True when a copy is on this machine, or when a download source exists and answers.
    """
    spec = get_spec(weights) if isinstance(weights, str) else weights
    found = find_local(spec)
    if found is not None:
        return True, f"found at {found}"
    made = f"; make it with `{spec.made_by}` (see the README)" if spec.made_by else ""
    if spec.remote is None and spec.bundled:
        return False, f"{spec.filename} is not bundled in this version of bfr yet{made}"
    if spec.remote is None:
        return False, f"{spec.filename} is not in this install and has no public source{made}"
    off, var = offline()
    if off:
        return False, f"{spec.filename} is not downloaded and downloads are off ({var})"
    url = _hub_url() if spec.hub_repo else spec.url
    if not reachable(url):
        return False, f"{spec.filename} is not downloaded and {urllib.parse.urlsplit(url).hostname} is unreachable"
    return True, f"downloads from {spec.remote} on first use"
