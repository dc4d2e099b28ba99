"""Resampling requests that would silently do the wrong thing are refused with what to fix: a
prior concept that names nothing (file and line), a negative seed (the field), a dataset where no
row has a tag (not "the prior gives weight 0"). Audit vector #6, #10, #14."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from graph.resample import ResampleConfig, ResampleError, check_prior_concepts, read_prior, resample


def test_prior_concepts_that_match_nothing_are_named_with_file_and_line(tmp_path, wordnet_graph):
    def known(k: str) -> bool:
        return bool(wordnet_graph.resolve(k))

    csv = tmp_path / "prior.csv"
    csv.write_text("concept,weight\ngiraffe,5\ngiraffee,5\nzebra,2\nzzzznotaconcept,1\n")
    with pytest.raises(ResampleError) as e:
        check_prior_concepts(csv, known)
    assert f"{csv}:3: 'giraffee'" in str(e.value) and f"{csv}:5: 'zzzznotaconcept'" in str(e.value)
    assert "zebra" not in str(e.value)
    js = tmp_path / "prior.json"
    js.write_text(json.dumps({"giraffe": 5, "giraffee": 5}, indent=1))
    with pytest.raises(ResampleError, match=rf"{js}:3: 'giraffee'"):
        check_prior_concepts(js, known)
    js.write_text(json.dumps({"giraffe": 5, "wn:02084071": 2}))
    check_prior_concepts(js, known)  # labels, terms and ids are all known
    assert read_prior(js) == {"giraffe": 5.0, "wn:02084071": 2.0}


def test_negative_seed_is_a_config_error_naming_the_field():
    with pytest.raises(ValidationError) as e:
        ResampleConfig(seed=-1)
    assert e.value.errors()[0]["loc"] == ("seed",)
    assert ResampleConfig(seed=0).seed == 0


def test_no_tagged_row_says_so():
    with pytest.raises(ResampleError, match="none of the 3 rows has a concept tag"):
        resample([[], None, []], [[], None, []], None, ResampleConfig())
    with pytest.raises(ResampleError, match="none of the 2 rows has a concept tag"):
        resample([[], []], [[], []], None, ResampleConfig(method="cap", target_size=1))
