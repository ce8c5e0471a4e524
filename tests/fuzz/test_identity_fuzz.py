"""SPIFFE IDs, X.509-SVIDs, bundles, chains and cards from mutated input: IdentityError only.

The targets are in _targets.py (shared with the atheris entry points). Inputs are
real dev CA material from corpus/ mutated a few times: bits flipped, bytes set,
cut, deleted or inserted, either in the PEM text or inside one certificate's
DER (re-encoded, so the PEM layer stays sound and the damage reaches the X.509
decoder), spliced with another seed, or certificate blocks of several seeds
shuffled into one chain. Every kept corpus input is replayed first. Deprecation
warnings from cryptography are errors here, so a warning on a damaged
certificate must end as an IdentityError too. "Never a hang" is checked by
counting: no verification checks more than MAX_SIGNATURE_CHECKS signatures.
"""

from __future__ import annotations

import base64
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def _load_targets() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "zmeshlib_fuzz_targets", Path(__file__).with_name("_targets.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


T = _load_targets()
pytestmark = pytest.mark.filterwarnings("error::cryptography.utils.CryptographyDeprecationWarning")

FUZZ = settings(
    max_examples=300,
    deadline=None,  # no timing assertions; the signature count bounds the work instead
    derandomize=True,  # the same examples every run: a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_BLOCK = re.compile(rb"(-----BEGIN ([A-Z ]+)-----)(.*?)(-----END \2-----)", re.S)


# -- the corpus -------------------------------------------------------------------------


def test_the_corpus_is_small_and_has_every_target():
    targets = [*T.TARGETS, "spiffe_id"]
    files = [p for t in targets for p in (T.CORPUS / t).iterdir() if p.is_file()]
    assert {p.parent.name for p in files} == set(targets)
    assert len(files) < 60
    assert sum(p.stat().st_size for p in files) < 200_000
    assert any(p.name.startswith("crash-") for p in files)


def _corpus_cases() -> list[tuple[str, str]]:
    return [(target, name) for target in T.TARGETS for name, _ in T.corpus(target)]


@pytest.mark.parametrize(("target", "name"), _corpus_cases())
def test_corpus_input(target, name):
    data = dict(T.corpus(target))[name]
    T.TARGETS[target](data)


@pytest.mark.parametrize("name", [name for name, _ in T.corpus("spiffe_id")])
def test_spiffe_id_corpus_input(name):
    T.spiffe_id(dict(T.corpus("spiffe_id"))[name].decode("utf-8", "surrogatepass"))


def test_the_seeds_are_sound():
    """The mutations start from input that passes: otherwise they would test little."""
    seeds = dict(T.corpus("verify_chain"))
    bundles, at = T.anchors()
    svid = T.X509Svid.parse(seeds["chain.pem"])
    assert svid.verify(bundles, at=at) == svid.spiffe_id
    card = T.Card.from_bytes(dict(T.corpus("card"))["card.bin"])
    assert card.verify(bundles, now=at.timestamp()).spiffe_id == svid.spiffe_id


# -- mutations --------------------------------------------------------------------------


@st.composite
def edited(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one to four edits: flip, set, cut, delete, insert."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            out += draw(st.binary(min_size=1, max_size=8))
            continue
        at = draw(st.integers(0, len(out) - 1))
        op = draw(st.sampled_from(["flip", "set", "cut", "delete", "insert"]))
        if op == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            out[at] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0x81, 0x82, 0xFF]))
        elif op == "cut":
            del out[at:]
        elif op == "delete":
            del out[at : at + draw(st.integers(1, 16))]
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(out)


@st.composite
def mutated(draw: st.DrawFn, target: str) -> bytes:
    seeds = [data for _, data in T.corpus(target)]
    seed = draw(st.sampled_from(seeds))
    blocks = list(_BLOCK.finditer(seed))
    mode = draw(st.sampled_from(["der", "der", "text", "splice", "shuffle"]))
    if mode == "der" and blocks:
        block = draw(st.sampled_from(blocks))
        der = draw(edited(base64.b64decode(block.group(3), validate=False)))
        return seed[: block.start(3)] + b"\n" + base64.encodebytes(der) + seed[block.end(3) :]
    if mode == "splice":
        other = draw(st.sampled_from(seeds))
        return seed[: draw(st.integers(0, len(seed)))] + other[draw(st.integers(0, len(other))) :]
    if mode == "shuffle":
        every = [m.group(0) + b"\n" for s in seeds for m in _BLOCK.finditer(s)]
        if every:
            return b"".join(draw(st.lists(st.sampled_from(every), min_size=1, max_size=9)))
    return draw(edited(seed))


# -- the targets ------------------------------------------------------------------------

_ANY_CHAR = st.characters(blacklist_categories=())  # surrogates included
_NEAR_IDS = st.builds(
    lambda scheme, td, path: scheme + td + path,
    st.sampled_from(["spiffe://", "SPIFFE://", "spiffe:/", "", "spiffe://user@"]),
    st.text(alphabet=st.sampled_from("abc.-_:@%?#/Z\u00e9\x00\ud800"), max_size=12),
    st.text(alphabet=st.sampled_from("ab/._-%?#.\n\ud800\U0001f600"), max_size=20),
)


@FUZZ
@given(
    st.one_of(
        st.text(_ANY_CHAR, max_size=80), _NEAR_IDS, st.text(_ANY_CHAR, min_size=2040, max_size=2100)
    )
)
def test_spiffe_id_on_arbitrary_text(text):
    T.spiffe_id(text)


@FUZZ
@given(mutated("svid_parse"))
def test_svid_parse_on_mutated_pem_and_der(data):
    T.svid_parse(data)


@FUZZ
@given(mutated("bundle_pem"))
def test_bundles_from_mutated_pem(data):
    T.bundle_pem(data)


@FUZZ
@given(mutated("verify_chain"))
def test_verify_chain_on_mutated_chains(data):
    T.verify_chain_target(data)


@FUZZ
@given(mutated("card"))
def test_card_decoder_and_verify_on_mutated_cards(data):
    T.card(data)


def test_the_tangle_in_the_corpus_stays_within_the_budget():
    # the kept input that once cost 8,659 signature checks per verify
    data = dict(T.corpus("verify_chain"))["crash-path-search-tangle.pem"]
    certificates = T.x509.load_pem_x509_certificates(data)
    bundles, at = T.anchors()
    with T.counting_signatures() as checks, pytest.raises(T.IdentityError) as exc:
        T.verify_chain(certificates, bundles, at=at)
    assert exc.value.rule == "path-search-limit"
    assert checks[0] == T.svid_module.MAX_SIGNATURE_CHECKS
