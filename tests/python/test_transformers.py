"""cflash in Hugging Face transformers (cflash.integrations.transformers.register()): tiny
random-weight Llama, Qwen2 (sliding window), Mistral (sliding window), Gemma2 (softcap,
alternating sliding layers) and gpt-oss (attention sinks, alternating sliding layers) built here
(no download), against the same weights on SDPA (Gemma2 and gpt-oss: eager, as transformers' SDPA
path refuses softcap and sinks): logits and greedy generation with padded batches, packed
sequences via position_ids, a static cache, 4-D masks (a caller's own, transformers' SDPA masks),
dropout in training, gradients, and continuous batching."""

import copy
import os

import pytest

from conftest import require

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here downloads: make sure nothing tries
torch = require("torch", "PyTorch is not installed")
transformers = require("transformers", "transformers is not installed (.ci/deps.sh python installs it)")

import cflash.integrations.transformers as cft  # noqa: E402

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)


def _configs():
    t = transformers
    return {
        "llama": (t.LlamaConfig(**COMMON), t.LlamaForCausalLM, "sdpa"),
        "qwen2": (t.Qwen2Config(use_sliding_window=True, sliding_window=6, max_window_layers=1, **COMMON),
                  t.Qwen2ForCausalLM, "sdpa"),
        "mistral": (t.MistralConfig(sliding_window=5, **COMMON), t.MistralForCausalLM, "sdpa"),
        "gemma2": (t.Gemma2Config(head_dim=16, sliding_window=4, attn_logit_softcapping=2.0, query_pre_attn_scalar=16,
                                  **COMMON), t.Gemma2ForCausalLM, "eager"),
        "gpt_oss": (t.GptOssConfig(head_dim=16, sliding_window=4, num_local_experts=4, num_experts_per_tok=2,
                                   layer_types=["sliding_attention", "full_attention"],
                                   **dict(COMMON, intermediate_size=64)), t.GptOssForCausalLM, "eager"),
    }


MODELS = ["llama", "qwen2", "mistral", "gemma2", "gpt_oss"]


@pytest.fixture(scope="module", autouse=True)
def registered():
    names = cft.register()
    assert names == ("cflash", "cfa")
    assert all(n in transformers.AttentionInterface() for n in names)
    yield


def pair(name, **overrides):
    """(reference model, cflash model) with the same random weights, fp32, eval mode."""
    cfg, cls, ref_impl = _configs()[name]
    cfg = copy.deepcopy(cfg)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    ref = cls(copy.deepcopy(cfg)).eval()
    with torch.no_grad():  # gpt-oss: sinks of weight (initialised near 0, they would test little)
        for m in ref.modules():
            if isinstance(getattr(m, "sinks", None), torch.nn.Parameter):
                m.sinks.normal_(0.0, 2.0)
    ref.set_attn_implementation(ref_impl)
    ours = cls(copy.deepcopy(cfg)).eval()
    ours.load_state_dict(ref.state_dict())
    ours.set_attn_implementation("cfa")
    assert ours.config._attn_implementation == "cfa" and ref.config._attn_implementation == ref_impl
    return ref, ours


def close(a, b, what, tol=1e-4):
    err = (a - b).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), "%s: max error %.3g" % (what, err)


def padded_batch(g):
    ids = torch.randint(3, 128, (3, 13), generator=g)
    mask = torch.ones(3, 13, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, :9] = 0
    return ids, mask


@pytest.mark.parametrize("name", MODELS)
def test_padded_batch_logits_and_greedy_generation(name):
    ref, ours = pair(name)
    ids, mask = padded_batch(torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ref(ids, attention_mask=mask).logits, ours(ids, attention_mask=mask).logits
    valid = mask.bool()
    close(b[valid], a[valid], "logits")
    kw = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(ids, **kw), ref.generate(ids, **kw)), "greedy tokens"


@pytest.mark.parametrize("name", MODELS)
def test_packed_sequences_via_position_ids(name):
    ref, ours = pair(name)
    g = torch.Generator().manual_seed(2)
    lens = [5, 9, 4]
    ids = torch.randint(3, 128, (1, sum(lens)), generator=g)
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    with torch.no_grad():  # no cache: transformers' masks treat position_ids as packing only then
        a = ref(ids, position_ids=pos, use_cache=False).logits
        b = ours(ids, position_ids=pos, use_cache=False).logits
        if name != "gpt_oss":  # (transformers 5.25's gpt-oss on eager ignores the packing: alone only)
            close(b, a, "packed logits")
        start = 0
        for n in lens:  # each packed sequence as if alone
            alone = ours(ids[:, start:start + n]).logits
            close(b[:, start:start + n], alone, "sequence at %d alone" % start)
            start += n


@pytest.mark.parametrize("name", MODELS)
def test_static_cache_generation(name):
    ref, ours = pair(name)
    ids, mask = padded_batch(torch.Generator().manual_seed(3))
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    want = ref.generate(ids, **kw)
    assert torch.equal(ours.generate(ids, cache_implementation="static", **kw), want)
    # a forward on a static cache without an attention mask: only the filled slots are read
    one = ids[:1, 5:]
    with torch.no_grad():
        logits = []
        for m in (ref, ours):
            cache = transformers.StaticCache(config=m.config, max_cache_len=40)
            m(one[:, :5], past_key_values=cache)
            logits.append(m(one[:, 5:], past_key_values=cache).logits)
    close(logits[1], logits[0], "static cache, no mask")


def test_dropout_in_training_reaches_the_library():
    ref, ours = pair("llama", attention_dropout=0.5)
    seen = []
    real = cft.cflash.flash_attn_varlen_func, cft.cflash.flash_attn_func

    def spy(f):
        def g(*a, **kw):
            seen.append(kw.get("dropout_p"))
            return f(*a, **kw)
        return g

    ids = torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(4))
    try:
        cft.cflash.flash_attn_varlen_func, cft.cflash.flash_attn_func = spy(real[0]), spy(real[1])
        ours.train()
        torch.manual_seed(7)
        a = ours(ids).logits
        torch.manual_seed(7)
        b = ours(ids).logits
        c = ours(ids).logits
    finally:
        cft.cflash.flash_attn_varlen_func, cft.cflash.flash_attn_func = real
    assert seen and all(p == 0.5 for p in seen)
    assert torch.equal(a, b) and not torch.equal(a, c), "dropout: repeatable by torch's seed, else random"
    a.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ours.parameters() if p.requires_grad)
    with torch.no_grad():
        ours.eval()
        close(ours(ids).logits, ref(ids).logits, "eval logits")


@pytest.mark.parametrize("name", ["mistral", "gpt_oss"])
def test_gradients_match_the_reference(name):
    """Training gradients of every parameter (gpt_oss: the sinks' too) against SDPA / eager."""
    ref, ours = pair(name)
    ids, mask = padded_batch(torch.Generator().manual_seed(5))
    for m in (ref, ours):
        m.train()
        out = m(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()
    grads = dict(ours.named_parameters())
    assert name != "gpt_oss" or any(n.endswith("sinks") for n in grads)
    for n, p in ref.named_parameters():
        close(grads[n].grad, p.grad, "grad of " + n, tol=1e-3)


def four_d_masks(g, S=13):
    """(keep (3, 1, S, S) of bool) x2: causal with left padding, then with random holes (each
    token keeps itself): transformers' mask and a caller's own."""
    keep = torch.ones(3, 1, S, S, dtype=torch.bool).tril()
    keep[1, ..., :4] = False
    keep[2, ..., :9] = False
    eye = torch.eye(S, dtype=torch.bool)
    return keep | eye, (keep & (torch.rand(3, 1, S, S, generator=g) > 0.3)) | eye


@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt_oss"])
def test_4d_masks_on_the_library(name):
    """A 4-D mask given to the model goes to the library's mask (boolean) or bias (additive), with
    softcap (gemma2) and sinks (gpt_oss): the same logits as the reference (transformers' eager
    adds a boolean mask as numbers: additive there)."""
    ref, ours = pair(name)
    g = torch.Generator().manual_seed(8)
    ids = torch.randint(3, 128, (3, 13), generator=g)
    called = []
    real = cft._masked

    def spy(*a):
        called.append(a[3].dtype)
        return real(*a)

    forms = ("bool", "float") if name == "llama" else ("float",)
    for keep in four_d_masks(g):
        for form in forms:
            m = keep if form == "bool" else torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
            try:
                cft._masked = spy
                with torch.no_grad():
                    b = ours(ids, attention_mask=m).logits
            finally:
                cft._masked = real
            with torch.no_grad():
                a = ref(ids, attention_mask=m).logits
            close(b, a, "%s 4-D mask logits" % form)
    assert len(called) == 2 * len(forms) * ours.config.num_hidden_layers


def test_sdpa_registration_serves_4d_masks():
    """Registered for "sdpa", the masks transformers builds for SDPA (4-D, boolean) go to the
    library, with the same logits and greedy tokens as transformers' own SDPA."""
    ref, _ = pair("llama")
    ids, mask = padded_batch(torch.Generator().manual_seed(9))
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want_logits = ref(ids, attention_mask=mask).logits
    want = ref.generate(ids, **kw)
    want_static = ref.generate(ids, cache_implementation="static", **kw)
    shapes = []
    real = cft._masked

    def spy(*a):
        shapes.append(tuple(a[3].shape))
        return real(*a)

    try:
        cft.register(sdpa=True)
        cft._masked = spy
        with torch.no_grad():
            got_logits = ref(ids, attention_mask=mask).logits
        got = ref.generate(ids, **kw)
        got_static = ref.generate(ids, cache_implementation="static", **kw)  # (unfilled slots masked)
    finally:
        cft._masked = real
        cft.unregister_sdpa()
    valid = mask.bool()
    close(got_logits[valid], want_logits[valid], "logits")
    assert torch.equal(got, want), "greedy tokens"
    assert torch.equal(got_static, want_static), "greedy tokens, static cache"
    assert (3, 1, 13, 13) in shapes and any(s[2] == 1 for s in shapes), "prefill and decode on the library's mask"


def test_continuous_batching():
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    ref, _ = pair("llama")
    gc = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=-1, pad_token_id=0)
    cb = ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=64, page_size=16)
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12, 13, 14, 15]]
    want = ref.generate_batch(inputs=prompts, generation_config=gc, continuous_batching_config=cb)
    calls = []
    real = cft.cflash.flash_attn_varlen_func

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    try:
        assert "sdpa" in cft.register(sdpa=True)  # continuous batching accepts "sdpa" (and flash names) only
        cft.cflash.flash_attn_varlen_func = spy
        got = ref.generate_batch(inputs=prompts, generation_config=gc, continuous_batching_config=cb)
    finally:
        cft.cflash.flash_attn_varlen_func = real
        cft.unregister_sdpa()
    assert calls, "the batches went through cflash's varlen call"
    assert [r.generated_tokens for r in got.values()] == [r.generated_tokens for r in want.values()]
    single = ref.generate(torch.tensor([prompts[1]]), max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert list(got.values())[1].generated_tokens == single[0, 3:].tolist()
