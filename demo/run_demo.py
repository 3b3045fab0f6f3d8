"""The main job: every installed plugin working in a real vLLM, on models
built here (no hub, no internet).

1. builds (or reuses from the cache) a tiny Llama with a trained tokenizer,
   and a copy with its attention output off, so that greedy decoding loops;
   every output is decoded with that tokenizer and printed as text;
2. starts ``vllm serve`` on the looping copy with the plugins installed and
   the stats logger on, and warms it up with untimed requests (vLLM's CPU
   build compiles a kernel with ``torch.compile`` on the first request that
   asks for logprobs, and again for the first batch of several), which also
   pick the prompt: of a few candidates, the one where plain greedy decoding
   repeats itself most;
3. shows each sampler doing its job through ``vllm_xargs`` with the official
   ``openai`` client, with a number: repeated 4-grams under plain greedy,
   no-repeat n-gram and DRY; for XTC, how often the model's top choice was
   replaced, next to ``xtc_probability``; a bad argument answered with HTTP
   400; and a LoRA adapter loaded on demand by vllm-plugin-lora-store from a
   directory store, named as the request's ``model``;
4. runs a short load (a few dozen requests, more at a time than the server
   runs at once) so the stats have something to show;
5. stops the server with SIGTERM, prints the summary table of the JSON Lines
   stats it wrote (from the end of the warm-up on) and draws their chart
   (``vllm-plugin-stats summary/plot``);
6. runs a NanoChat checkpoint (vllm-plugin-models) offline, once under its
   own architecture name and once renamed through an alias, next to
   transformers' greedy text for the same prompt;
7. runs the tiny Llama (attention on) on the torch_native platform
   (vllm-plugin-torch-native, ``VLLM_PLUGIN_TORCH_NATIVE=1``) next to
   transformers' greedy text;
8. embeds a document longer than a tiny BERT's context in one request with
   vllm-plugin-chunked-embeddings;
9. lists every file it wrote.

Each offline part runs in its own process (vLLM spawns processes; a platform
is chosen once per process).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Tokens per shown request (every shown request has this length, so their
#: times compare).
GEN_TOKENS = 48
#: The n of "repeated n-grams", and the no-repeat n-gram size shown.
NGRAM = 4
#: Candidate prompts: the demo shows the one where plain greedy repeats most.
CANDIDATES = (
    "Once upon a time",
    "The quick brown fox",
    "Hello world! How are you",
    "Plugins extend vLLM",
    "def add(a, b):",
    "Numbers: 0 1 2 3",
    "A small model generated",
)
DRY = {"dry_multiplier": 3.0, "dry_base": 1.75, "dry_allowed_length": 2}
XTC_PROBABILITY = 0.5
#: XTC is off under greedy decoding unless asked, and by default skips a step
#: whose removals would include a newline token; both off here, so that every
#: step where two tokens reach the threshold is a coin toss (the rate shown).
XTC_GREEDY = {"xtc_under_greedy": True, "xtc_eos_newline_guard": False}
XTC_SEEDS = (1, 2, 3, 4)
#: The load: requests, clients at a time, and what the server runs at once
#: (``--max-num-seqs``: fewer than the clients, so requests also wait).
LOAD_REQUESTS = 40
LOAD_CLIENTS = 8
MAX_NUM_SEQS = 3
LOAD_DEADLINE_S = 25.0
#: Files and folders the demo wrote, printed at the end.
WROTE: list[tuple[str, Path]] = []


def say(part: str, text: str) -> None:
    print(f"[demo] {part:<9} {text}", flush=True)


def quoted(text: str, width: int = 96) -> str:
    """The text on one line, JSON-escaped, cut to ``width`` characters."""
    s = json.dumps(text, ensure_ascii=False)[1:-1]
    return '"' + (s if len(s) <= width else s[: width - 1] + "…") + '"'


def repeated_ngrams(context: list[int], output: list[int], n: int = NGRAM) -> int:
    """How many output tokens complete an n-gram already seen earlier in
    prompt + output (what ``no_repeat_ngram_size=n`` forbids)."""
    seq = [*context, *output]
    seen: set[tuple[int, ...]] = set()
    count = 0
    for end in range(n, len(seq) + 1):
        gram = tuple(seq[end - n:end])
        if gram in seen and end > len(context):
            count += 1
        seen.add(gram)
    return count


def longest_repeat(context: list[int], output: list[int]) -> int:
    """The longest run of output tokens that copies an earlier stretch of
    prompt + output token for token (what DRY penalises, more the longer)."""
    seq = [*context, *output]
    best = 0
    for i in range(len(context), len(seq)):
        for j in range(i):
            k = 0
            while k <= j and seq[i - k] == seq[j - k] and i - k >= len(context):
                k += 1
            best = max(best, k)
    return best


@dataclass
class Gen:
    ids: list[int]
    text: str
    seconds: float
    #: per step: (the model's top token, probability of the top two) from
    #: the raw logprobs (before any logits processor)
    tops: list[tuple[int, float, float]] = field(default_factory=list)


class Demo:
    def __init__(self, client: Any, tokenizer: Any) -> None:
        self.client = client
        self.tok = tokenizer

    def prompt_ids(self, prompt: str) -> list[int]:
        return list(self.tok(prompt)["input_ids"])

    def complete(self, prompt: str, model: str = "tiny", xargs: dict | None = None, *,
                 max_tokens: int = GEN_TOKENS, seed: int | None = None, logprobs: int | None = 2) -> Gen:
        extra: dict[str, Any] = {"ignore_eos": True, "return_tokens_as_token_ids": True}
        if xargs:
            extra["vllm_xargs"] = xargs
        t = time.monotonic()
        r = self.client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0,
                                           logprobs=logprobs, seed=seed, extra_body=extra)
        seconds = time.monotonic() - t
        lp = r.choices[0].logprobs
        if lp is None:  # no logprobs asked: only the text and the count
            return Gen([0] * r.usage.completion_tokens, r.choices[0].text, seconds)
        ids = [int(t.split(":")[1]) for t in lp.tokens]
        tops = []
        for alts in lp.top_logprobs or []:
            ranked = sorted(((v, int(k.split(":")[1])) for k, v in alts.items()), reverse=True)
            p2 = math.exp(ranked[1][0]) if len(ranked) > 1 else 0.0
            tops.append((ranked[0][1], math.exp(ranked[0][0]), p2))
        return Gen(ids, self.tok.decode(ids), seconds, tops)


def build_looping_lm() -> Path:
    """The tiny Llama with its attention output switched off (every
    ``o_proj`` weight zero): each token is then predicted from the one before
    it alone, so greedy decoding falls into a loop within a few dozen tokens,
    as real models do on long outputs (the random model with attention on
    never repeats itself). Built from :func:`build_causal_lm` (its tokenizer
    included) and cached next to it."""
    from safetensors.torch import load_file, save_file

    from vllm_plugin_core.testing.models import build_causal_lm, cached_build

    base = build_causal_lm()

    def build(out: Path) -> None:
        for f in base.iterdir():
            if f.is_file() and f.name not in ("spec.json", ".complete") and f.suffix != ".safetensors":
                shutil.copy2(f, out / f.name)
        for f in base.glob("*.safetensors"):
            tensors = load_file(str(f))
            for name, t in tensors.items():
                if name.endswith("self_attn.o_proj.weight"):
                    t.zero_()
            save_file(tensors, str(out / f.name), metadata={"format": "pt"})

    return cached_build("demo-looping-lm", {"base": base.name}, build)


def main() -> int:
    import openai
    from transformers import AutoTokenizer

    from vllm_plugin_core.testing.models import build_causal_lm, build_lora_adapter, cache_dir
    from vllm_plugin_core.testing.server import VllmServer

    t0 = time.monotonic()
    original = build_causal_lm()
    model = build_looping_lm()
    tokenizer = AutoTokenizer.from_pretrained(model)
    say("model", f"{model} ({time.monotonic() - t0:.1f} s): the tiny Llama with its attention output off, so "
                 "greedy decoding loops as the samplers need; its trained tokenizer decodes every output below")
    WROTE.append(("tiny models built here (reused on the next run)", cache_dir()))
    work = Path(tempfile.mkdtemp(prefix="vllm-plugins-demo-"))
    WROTE.append(("this run's folder", work))
    stats = work / "stats.jsonl"
    store = work / "adapters"
    # on q, v and o: the adapter switches attention back on (rank 8), so its text differs
    shutil.copytree(build_lora_adapter(model, target_modules=("q_proj", "v_proj", "o_proj")), store / "my-adapter",
                    ignore=shutil.ignore_patterns("spec.json", ".complete"))
    env = {"VLLM_PLUGIN_STATS_PATH": str(stats), "VLLM_PLUGIN_STATS_REQUESTS": "1",
           "VLLM_LOG_STATS_INTERVAL": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
           "VLLM_PLUGIN_LORA_STORE_URI": str(store),
           "VLLM_PLUGIN_LORA_STORE_CACHE_DIR": str(work / "lora-cache")}
    server = VllmServer(model, ["--max-model-len", "512", "--enable-lora", "--max-lora-rank", "8",
                                "--max-num-seqs", str(MAX_NUM_SEQS)], env, served_model_name="tiny")
    WROTE.append(("vllm serve's log", server.log_path))
    say("serve", "starting vllm serve (about a minute and a half on 2 CPU cores) ...")
    try:
        server.start()
    except Exception as exc:
        say("serve", f"server failed: {exc}")
        return 1
    say("serve", f"ready at {server.base_url} after {server.startup_seconds:.0f} s")
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
    demo = Demo(client, tokenizer)
    shown: list[tuple[str, float]] = []
    try:
        prompt, plain = warm_up(demo)
        time.sleep(1.5)  # the warm-up's last stats interval is written before the mark
        mark = time.time()
        samplers_demo(demo, prompt, plain, shown)
        lora_demo(demo, prompt, plain, shown)
        try:
            client.completions.create(model="tiny", prompt=prompt, max_tokens=4,
                                      extra_body={"vllm_xargs": {"dry_multiplier": 1.0, "dry_allowed_length": 2**31}})
        except openai.BadRequestError as err:
            say("samplers", f"bad argument -> HTTP {err.status_code}: {err.message[:120]}")
        timing_line(shown)
        load_demo(demo, prompt)
        time.sleep(1.5)  # one more stats interval, so the load's tail is written
    finally:
        server.stop(signal.SIGTERM)
    stats_demo(stats, mark, work)
    nanochat_demo(work)
    torch_native_demo(original, tokenizer, demo.prompt_ids(prompt))
    chunked_embeddings_demo()
    say("files", "written by this run:")
    for label, path in WROTE:
        print(f"[demo]   {label:<48} {path}")
    say("done", f"in {time.monotonic() - t0:.0f} s")
    return 0


def timing_line(shown: list[tuple[str, float]]) -> None:
    """Each shown request against the median of the others (the first
    request's stall must not be among them)."""
    ratios = [(s / statistics.median([o for j, (_, o) in enumerate(shown) if j != i]), label, s)
              for i, (label, s) in enumerate(shown)]
    ratio, label, seconds = max(ratios)
    say("timing", f"{len(shown)} shown requests of {GEN_TOKENS} tokens: median "
                  f"{statistics.median(s for _, s in shown):.2f} s, slowest {seconds:.2f} s ({label}: "
                  f"{ratio:.1f}x the median of the others)")


def warm_up(demo: Demo) -> tuple[str, Gen]:
    """Untimed requests: vLLM's CPU build runs its first batches slowly (more
    so through LoRA). They also choose the prompt and XTC's threshold."""
    t = time.monotonic()
    first = demo.complete(CANDIDATES[0])
    lora = demo.complete(CANDIDATES[0], model="my-adapter")
    runs = {p: demo.complete(p) for p in CANDIDATES}
    for xargs in ({"no_repeat_ngram_size": NGRAM}, DRY, {"xtc_threshold": 0.1, "xtc_probability": 1.0, **XTC_GREEDY}):
        demo.complete(CANDIDATES[0], xargs=xargs, seed=0)
    demo.complete(CANDIDATES[0], model="my-adapter")
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(LOAD_CLIENTS) as pool:  # batches of several requests, LoRA among them
        burst = list(pool.map(lambda i: demo.complete(CANDIDATES[i % len(CANDIDATES)],
                                                      model="my-adapter" if i % 3 == 0 else "tiny"),
                              range(2 * LOAD_CLIENTS)))
    later = statistics.median(g.seconds for g in runs.values())
    say("warm-up", f"{len(CANDIDATES) + 2 * LOAD_CLIENTS + 6} untimed requests in {time.monotonic() - t:.0f} s: "
                   f"the first took {first.seconds:.2f} s, the first through LoRA (fetched from the store, loaded) "
                   f"{lora.seconds:.2f} s, later ones {later:.2f} s each, the slowest of the first concurrent "
                   f"ones {max(g.seconds for g in burst):.2f} s")
    say("warm-up", "(vLLM compiles its logprobs kernel with torch.compile on the first request asking for "
                   "logprobs, and again for the first batch of several; see README)")
    counts = {p: repeated_ngrams(demo.prompt_ids(p), g.ids) for p, g in runs.items()}
    prompt = max(CANDIDATES, key=lambda p: counts[p])
    say("prompt", f"{quoted(prompt)}: of {len(CANDIDATES)} candidate prompts, the one where plain greedy repeats "
                  f"itself most ({counts[prompt]} of {GEN_TOKENS} tokens complete a repeated {NGRAM}-gram; "
                  f"others: {', '.join(str(counts[p]) for p in CANDIDATES if p != prompt)})")
    return prompt, runs[prompt]


def xtc_threshold(gens: list[Gen]) -> float:
    """A threshold that the second most likely token reaches on about 80 %
    of greedy's steps (so XTC has two top choices to choose between)."""
    seconds = sorted(p2 for g in gens for _, _, p2 in g.tops)
    if not seconds:
        return 0.1
    value = seconds[len(seconds) // 5]
    return float(f"{min(0.5, max(0.001, value)):.2g}")


def samplers_demo(demo: Demo, prompt: str, plain: Gen, shown: list[tuple[str, float]]) -> None:
    ctx = demo.prompt_ids(prompt)
    base = demo.complete(prompt)
    shown.append(("plain greedy", base.seconds))
    same = "" if base.ids == plain.ids else "  (DIFFERENT from the warm-up's greedy text)"
    say("samplers", f"prompt {quoted(prompt)}, {GEN_TOKENS} greedy tokens each (temperature 0){same}")

    def row(label: str, g: Gen, note: str) -> None:
        say("samplers", f"{label:<30} {note}")
        print(f"[demo]           {'':<30} -> {quoted(g.text)}")

    def reps(g: Gen) -> str:
        return (f"repeated {NGRAM}-grams {repeated_ngrams(ctx, g.ids):>2}, "
                f"longest copied run {longest_repeat(ctx, g.ids):>2} tokens")

    row("plain greedy", base, reps(base))
    ngram = demo.complete(prompt, xargs={"no_repeat_ngram_size": NGRAM})
    shown.append((f"no_repeat_ngram_size={NGRAM}", ngram.seconds))
    row(f"no_repeat_ngram_size={NGRAM}", ngram, reps(ngram))
    dry = demo.complete(prompt, xargs=DRY)
    shown.append(("DRY", dry.seconds))
    row(f"DRY multiplier={DRY['dry_multiplier']:g} base={DRY['dry_base']:g} "
        f"allowed={DRY['dry_allowed_length']}", dry, reps(dry))
    threshold = xtc_threshold([base])
    xtc = {"xtc_threshold": threshold, "xtc_probability": XTC_PROBABILITY, **XTC_GREEDY}
    eligible = replaced = 0
    gens = []
    for seed in XTC_SEEDS:
        g = demo.complete(prompt, xargs=xtc, seed=seed)
        shown.append((f"XTC seed={seed}", g.seconds))
        gens.append(g)
        for token, (top, _, p2) in zip(g.ids, g.tops, strict=False):
            if p2 >= threshold:  # two or more tokens at or above the threshold: XTC may act
                eligible += 1
                replaced += token != top
    rate = replaced / eligible if eligible else float("nan")
    row(f"XTC threshold={threshold:g} p={XTC_PROBABILITY:g} (greedy)", gens[0],
        f"top choice replaced on {replaced} of {eligible} steps where 2+ tokens reached the threshold "
        f"({rate:.0%}; xtc_probability {XTC_PROBABILITY:.0%}; {len(XTC_SEEDS)} seeds; "
        f"{repeated_ngrams(ctx, gens[0].ids)} repeated {NGRAM}-grams)")
    again = demo.complete(prompt, xargs=xtc, seed=XTC_SEEDS[0])
    shown.append((f"XTC seed={XTC_SEEDS[0]} again", again.seconds))
    say("samplers", f"{'XTC same seed again':<30} {'same text' if again.ids == gens[0].ids else 'DIFFERENT text'} "
                    f"(the coin is a function of the seed and the position)")


def lora_demo(demo: Demo, prompt: str, plain: Gen, shown: list[tuple[str, float]]) -> None:
    g = demo.complete(prompt, model="my-adapter")
    shown.append(("LoRA", g.seconds))
    differ = sum(a != b for a, b in zip(g.ids, plain.ids, strict=True))
    say("lora", f"{'model=my-adapter':<30} {differ} of {GEN_TOKENS} tokens differ from the base model's "
                f"(fetched from the directory store on first use, in the warm-up)")
    print(f"[demo]           {'':<30} -> {quoted(g.text)}")


def load_demo(demo: Demo, prompt: str) -> None:
    """A short closed-loop load: LOAD_CLIENTS clients, each sending its next
    request when the previous one is answered, starting one after another."""
    rng = random.Random(0)
    jobs: list[tuple[str, str, dict | None, int]] = []
    for i in range(LOAD_REQUESTS):
        kind = i % 6
        xargs = ({"no_repeat_ngram_size": NGRAM} if kind == 1 else DRY if kind == 2
                 else {"xtc_threshold": 0.1, "xtc_probability": XTC_PROBABILITY, **XTC_GREEDY} if kind == 3
                 else None)
        jobs.append((rng.choice(CANDIDATES), "my-adapter" if kind == 4 else "tiny", xargs,
                     rng.randrange(2 * GEN_TOKENS, 4 * GEN_TOKENS + 1)))
    lock = threading.Lock()
    done: list[Gen] = []
    t0 = time.monotonic()

    def client(k: int) -> None:
        time.sleep(0.4 * k)  # clients join one after another
        while time.monotonic() - t0 < LOAD_DEADLINE_S:
            with lock:
                if not jobs:
                    return
                p, m, x, n = jobs.pop()
            g = demo.complete(p, model=m, xargs=x, max_tokens=n, seed=len(jobs), logprobs=None)
            with lock:
                done.append(g)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(LOAD_CLIENTS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.monotonic() - t0
    e2e = sorted(g.seconds for g in done)
    per_token = sorted(g.seconds / len(g.ids) for g in done)
    med = statistics.median(per_token)
    say("load", f"{len(done)} requests ({2 * GEN_TOKENS} to {4 * GEN_TOKENS} tokens; plain, samplers and LoRA mixed), "
                f"{LOAD_CLIENTS} clients, the server runs {MAX_NUM_SEQS} at once: {wall:.1f} s, "
                f"{sum(len(g.ids) for g in done) / wall:.0f} generated tokens/s")
    say("load", f"end-to-end per request: median {statistics.median(e2e):.2f} s, max {e2e[-1]:.2f} s; per token "
                f"median {med * 1000:.0f} ms, max {per_token[-1] * 1000:.0f} ms ({per_token[-1] / med:.1f}x)")


def _window(stats: Path, mark: float, out: Path) -> int:
    """The records of ``stats`` from ``mark`` (a ``time.time()``) on, into
    ``out``: start records, intervals ending after it (clipped to it),
    request records finished after it, and the stop records with the uptime
    counted from it. Returns how many request records it kept."""
    kept = 0
    lines = []
    for line in stats.read_text().splitlines():
        rec = json.loads(line)
        ts = float(rec.get("ts") or 0.0)
        kind = rec.get("type")
        if kind in ("interval", "request") and ts < mark:
            continue
        if kind == "interval":
            rec["interval_s"] = min(float(rec.get("interval_s") or 0.0), ts - mark)
        elif kind == "request":
            kept += 1
        elif kind == "stop":
            rec["uptime_s"] = ts - mark
            rec.pop("idle_s", None)  # recomputed from the kept interval records
        lines.append(json.dumps(rec))
    out.write_text("\n".join(lines) + "\n")
    return kept


def stats_demo(stats: Path, mark: float, work: Path) -> None:
    """The JSON Lines file the server wrote: its record types, the summary
    table (``vllm-plugin-stats summary``) and the chart (``... plot``) of
    the part after the warm-up."""
    from vllm_plugin_stats import summary

    kinds: dict[str, int] = {}
    for line in stats.read_text().splitlines():
        kind = json.loads(line)["type"]
        kinds[kind] = kinds.get(kind, 0) + 1
    WROTE.append(("stats (JSON Lines, the whole server run)", stats))
    say("stats", f"{stats}: {kinds}")
    shown = work / "stats-after-warm-up.jsonl"
    n = _window(stats, mark, shown)
    WROTE.append(("stats from the end of the warm-up on", shown))
    say("stats", f"the table and chart cover the {n} requests after the warm-up ({shown.name}; "
                 f"the whole run: vllm-plugin-stats summary {stats})")
    runs = summary.summarize_files([shown], lambda msg: say("stats", f"warning: {msg}"))
    table = "\n\n".join(summary.format_table(run, i) for i, run in enumerate(runs, 1))
    for line in table.splitlines():
        print(f"[demo]   {line}")
    chart = work / "stats-report.png"
    try:
        from vllm_plugin_stats import plot

        fig = plot.plot_files([shown], chart, print, table)
    except ImportError as exc:
        say("stats", f"no chart: {exc}")
        return
    WROTE.append(("stats chart", chart))
    empty = [ax.get_title(loc="left") for ax in fig.axes
             if not any(any(math.isfinite(float(y)) for y in line.get_ydata()) for line in ax.lines)]
    say("stats", f"chart: {chart}  (vllm-plugin-stats plot {shown.name} -o {chart.name}); "
                 + (f"panels WITHOUT data: {empty}" if empty else f"all {len(fig.axes)} panels have data"))


def nanochat_demo(work: Path) -> None:
    """NanoChat through vllm-plugin-models, offline, in a child process with an alias."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vllm_plugin_models.testing import build_nanochat, renamed_copy

    path = build_nanochat("gqa-3l")
    renamed = renamed_copy(path, work / "acme", "AcmeChatForCausalLM")
    WROTE.append(("NanoChat renamed for the alias", renamed))
    tok = AutoTokenizer.from_pretrained(path)
    text = "Once upon a time"
    prompt = list(tok(text)["input_ids"])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    ref_ids = ref[0, len(prompt):].tolist()
    say("models", f"NanoChat, prompt {quoted(text)}, 12 greedy tokens")
    say("models", f"{'transformers NanoChat':<32} -> {quoted(tok.decode(ref_ids))}")
    code = (
        "from vllm import SamplingParams\n"
        "from vllm_plugin_core.testing.pytest_plugin import make_llm\n"
        "if __name__ == '__main__':\n"
        "    import sys\n"
        "    llm = make_llm(sys.argv[1])\n"
        f"    o = llm.generate([{{'prompt_token_ids': {prompt!r}}}], SamplingParams(max_tokens=12, temperature=0,"
        " ignore_eos=True), use_tqdm=False)\n"
        "    print('TOKENS', list(o[0].outputs[0].token_ids))\n"
    )
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_PLUGIN_MODELS_ALIASES": "AcmeChatForCausalLM=NanoChatForCausalLM"}
    for label, target in (("vLLM NanoChatForCausalLM", path), ("vLLM alias AcmeChatForCausalLM", renamed)):
        out = subprocess.run([sys.executable, "-c", code, str(target)], env=env, capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("TOKENS")), None)
        if line is None:
            say("models", f"{label:<32} -> FAILED: {out.stderr[-500:]}")
            continue
        ids = json.loads(line[7:])
        same = "same as" if ids == ref_ids else "DIFFERENT from"
        say("models", f"{label:<32} -> {quoted(tok.decode(ids))}  ({same} transformers)")


OFFLINE = """
import json, sys
from vllm import SamplingParams
from vllm_plugin_core.testing.pytest_plugin import make_llm
if __name__ == "__main__":
    model, prompt, n = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    llm = make_llm(model)
    o = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=n, temperature=0,
                     ignore_eos=True), use_tqdm=False)
    from vllm.platforms import current_platform
    print("RESULT", json.dumps({"tokens": list(o[0].outputs[0].token_ids),
                                "platform": type(current_platform).__name__}))
"""


def run_child(code: str, args: list[str], env: dict[str, str]) -> dict | str:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", **env})
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    return json.loads(line[7:]) if line else "FAILED: " + out.stderr[-800:]


def torch_native_demo(model: Path, tokenizer: Any, prompt: list[int]) -> None:
    """The tiny Llama with attention on (the served one has it off), greedy on
    the torch_native platform, next to transformers' greedy for the same
    prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    n = GEN_TOKENS
    res = run_child(OFFLINE, [str(model), json.dumps(prompt), str(n)], {"VLLM_PLUGIN_TORCH_NATIVE": "1"})
    if isinstance(res, str):
        say("platform", f"torch_native -> {res}")
        return
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    ref_ids = ref[0, len(prompt):].tolist()
    same = sum(a == b for a, b in zip(res["tokens"], ref_ids, strict=False))
    verdict = "same text as" if res["tokens"] == ref_ids else f"{same} of {n} tokens the same as"
    say("platform", f"the tiny Llama with attention on, the samplers' prompt, {n} greedy tokens")
    say("platform", f"{'transformers':<30} -> {quoted(tokenizer.decode(ref_ids))}")
    say("platform", f"{'vLLM ' + res['platform']:<30} -> {quoted(tokenizer.decode(res['tokens']))}  "
                    f"({verdict} transformers)")


CHUNKED = """
import json, sys
from vllm_plugin_core.testing.pytest_plugin import make_llm
if __name__ == "__main__":
    llm = make_llm(sys.argv[1], max_model_len=128, io_processor_plugin="chunked_embeddings")
    doc = " ".join(["Plugins extend vLLM without forking it."] * 120)
    out = llm.encode({"data": {"input": [doc, "A short one."], "chunk_tokens": 100, "overlap_tokens": 10}},
                     pooling_task="plugin", use_tqdm=False)[0].outputs
    print("RESULT", json.dumps(out if isinstance(out, dict) else getattr(out, "__dict__", str(out)),
                               default=str))
"""


def chunked_embeddings_demo() -> None:
    from vllm_plugin_core.testing.models import build_embedding_model

    res = run_child(CHUNKED, [str(build_embedding_model())], {})
    if isinstance(res, str) or "data" not in res:
        say("chunked", f"-> {str(res)[:600]}")
        return
    for item in res["data"]:
        say("chunked", f"document {item['index']}: {item['num_tokens']} tokens in "
                       f"{item['num_chunks']} chunks -> one {len(item['embedding'])}-dim embedding")


if __name__ == "__main__":
    sys.exit(main())
