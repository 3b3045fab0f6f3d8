"""Documents per second and peak server memory: the plugin vs client-side chunking.

One ``vllm serve`` per mode (started fresh, so each peak starts from the same
baseline), the tiny BERT from ``vllm_plugin_core.testing.models`` (max length
128, so ~155 chunks of 127 content tokens per 20k-token document):

* ``plugin``: one ``POST /pooling`` with every document
  (``--io-processor-plugin chunked_embeddings``, ``aggregate=mean``);
* ``client``: the client tokenises each document with the model's tokenizer,
  cuts the same windows, calls ``/v1/embeddings`` once per chunk (token ids,
  ``--concurrency`` requests in flight) and merges with numpy.

Peak RSS is the largest sum of ``VmRSS`` over the server's process tree
(API server, engine core, ...), sampled every 100 ms from ``/proc`` during the
run (shared pages count once per process). Both modes check that they agree.

Run: ``python packages/chunked-embeddings/benchmarks/bench_throughput.py
[--docs 32] [--doc-tokens 20000] [--concurrency 8]``
(needs vLLM, this package and its core installed; ``VLLM_PLUGIN_CACHE_DIR``
to reuse the built model).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MAX_LEN = 128
WORDS = ("alpha beta gamma delta epsilon model vector chunk long text naïve café window span token "
         "the of and to in is was for on with as by at from 42 3.14 (see note) end.").split()


def tree_rss_bytes(root: int) -> int:
    """Sum of VmRSS over ``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


class PeakRss:
    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self.baseline = tree_rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_bytes(self.pid))


def make_docs(tok, n_docs: int, doc_tokens: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        words: list[str] = []
        text = ""
        while True:
            words.extend(rng.choice(WORDS) for _ in range(2000))
            text = " ".join(words)
            if len(tok(text, add_special_tokens=False, verbose=False).input_ids) >= doc_tokens:
                break
        ids = tok(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        docs.append(text[: ids.offset_mapping[doc_tokens - 1][1]])
    return docs


def post(url: str, body: dict, timeout: float = 3600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def run_plugin(server, docs: list[str]) -> tuple[float, np.ndarray, int]:
    t = time.perf_counter()
    body = post(server.url + "/pooling", {"model": "m", "data": {"input": docs, "aggregate": "mean"}})
    elapsed = time.perf_counter() - t
    items = body["data"]["data"]
    return elapsed, np.array([d["embedding"] for d in items]), sum(d["num_chunks"] for d in items)


def run_client(server, tok, docs: list[str], concurrency: int) -> tuple[float, np.ndarray, int]:
    bos = tok("x").input_ids[0]
    chunk = MAX_LEN - 1
    t = time.perf_counter()
    jobs = []  # (doc index, ids with specials, content tokens)
    for d, text in enumerate(docs):
        ids = tok(text, add_special_tokens=False, verbose=False).input_ids
        for s in range(0, len(ids), chunk):
            window = ids[s:s + chunk]
            jobs.append((d, [bos, *window], len(window)))

    def embed(job):
        body = post(server.base_url + "/embeddings", {"model": "m", "input": job[1]})
        return np.asarray(body["data"][0]["embedding"], dtype=np.float64)

    with ThreadPoolExecutor(concurrency) as pool:
        vectors = list(pool.map(embed, jobs))
    merged = []
    for d in range(len(docs)):
        idx = [i for i, j in enumerate(jobs) if j[0] == d]
        w = np.array([jobs[i][2] for i in idx], dtype=np.float64)
        v = (np.stack([vectors[i] for i in idx]) * w[:, None]).sum(0) / w.sum()
        merged.append(v / np.linalg.norm(v))
    return time.perf_counter() - t, np.array(merged), len(jobs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=32)
    ap.add_argument("--doc-tokens", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--modes", default="plugin,client")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from vllm_plugin_core.testing.models import build_embedding_model
    from vllm_plugin_core.testing.server import VllmServer

    model = build_embedding_model()
    tok = AutoTokenizer.from_pretrained(str(model))
    docs = make_docs(tok, args.docs, args.doc_tokens)
    chars = sum(map(len, docs))
    print(f"{args.docs} documents x {args.doc_tokens} tokens ({chars / len(docs):.0f} characters each), "
          f"tiny BERT (max length {MAX_LEN}), vLLM {_vllm_version()}")

    results = {}
    for mode in args.modes.split(","):
        server_args = ["--max-model-len", str(MAX_LEN), "--served-model-name", "m"]
        if mode == "plugin":
            server_args += ["--io-processor-plugin", "chunked_embeddings"]
        with VllmServer(model, server_args) as server:
            # warm-up, outside the measurement
            post(server.base_url + "/embeddings", {"model": "m", "input": "warm up"})
            with PeakRss(server.proc.pid) as rss:
                if mode == "plugin":
                    elapsed, vecs, chunks = run_plugin(server, docs)
                else:
                    elapsed, vecs, chunks = run_client(server, tok, docs, args.concurrency)
            results[mode] = vecs
            print(f"{mode:7s} {len(docs) / elapsed:7.3f} docs/s  {elapsed:7.1f} s  {chunks} chunks  "
                  f"server RSS baseline {rss.baseline / 2**20:7.0f} MiB  peak {rss.peak / 2**20:7.0f} MiB  "
                  f"(+{(rss.peak - rss.baseline) / 2**20:.0f} MiB)", flush=True)
    if len(results) == 2:
        diff = float(np.abs(results["plugin"] - results["client"]).max())
        print(f"max |plugin - client| over all embeddings: {diff:.2e}")


def _vllm_version() -> str:
    from vllm_plugin_core.version import vllm_version

    return str(vllm_version())


if __name__ == "__main__":
    main()
