"""Citation boilerplate: numbering, reference formats, and the real methods texts."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from ketabids.reports import citation as cit


def test_numbers_follow_first_appearance_and_are_reused():
    text, keys = cit.number_citations(
        "Registered (Avants et al., 2008), segmented (Avants et al., 2011), registered again "
        "(Avants et al., 2008).")
    assert text == "Registered [1], segmented [2], registered again [1]."
    assert keys == ("syn", "atropos")


def test_parenthesis_with_words_keeps_them_and_several_citations_share_one_bracket():
    text, keys = cit.number_citations(
        "normalisation (SyN, Avants et al., 2008); harmonisation (Johnson et al., 2007; "
        "Fortin et al., 2018).")
    assert text == "normalisation (SyN) [1]; harmonisation [2, 3]."
    assert keys == ("syn", "combat", "combat_mri")


def test_citation_outside_parentheses_and_unknown_ones_are_left_alone():
    text, keys = cit.number_citations("as shown by Haufe et al., 2014, and (Doe et al., 2031).")
    assert text == "as shown by [1], and (Doe et al., 2031)."
    assert keys == ("haufe",)
    assert cit.unknown_citations(text) == ["Doe et al., 2031"]


def test_template_citation_brings_both_mni_2009_papers():
    _, keys = cit.number_citations("the template (Fonov et al., 2009)")
    assert keys == ("mni2009", "mni2011")


def test_software_mentioned_without_citation_gets_one_once():
    text, keys = cit.number_citations("ketabids 0.1.0 uses Nipype; Nipype runs ANTs (antspyx).")
    assert text == "ketabids 0.1.0 [1] uses Nipype [2]; Nipype runs ANTs (antspyx) [3]."
    assert keys == ("ketabids_study", "nipype", "syn")
    # already cited: no second reference to the same paper
    text, keys = cit.number_citations("ANTs (antspyx) with SyN (Avants et al., 2008).")
    assert keys == ("syn",) and text == "ANTs (antspyx) with SyN [1]."


def test_study_is_always_listed():
    bp = cit.boilerplate("Plain text without citations.")
    assert bp.keys == ("ketabids_study",)
    assert cit.STUDY_DOI in bp.markdown and cit.STUDY_DOI in bp.bibtex and cit.STUDY_DOI in bp.html
    assert cit.boilerplate("Plain text.", cite_study=False).keys == ()


def test_every_reference_is_well_formed():
    forms = {}
    for key, ref in cit.REFERENCES.items():
        assert ref.key == key
        assert ref.doi or ref.url or ref.kind == "incollection", key  # a book chapter: no DOI
        if ref.doi:
            assert re.fullmatch(r"10\.\d{4,9}/\S+", ref.doi), ref.doi
        for form in ref.cite_as:
            forms.setdefault(form, []).append(key)
    assert forms["Fonov et al., 2009"] == ["mni2009", "mni2011"]
    assert all(len(v) == 1 for f, v in forms.items() if f != "Fonov et al., 2009")


def _bib_entries(bib: str) -> dict[str, str]:
    depth, entries, start = 0, {}, None
    for i, ch in enumerate(bib):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            assert depth >= 0
            if depth == 0:
                body = bib[start + 1:i]
                entries[body.split(",", 1)[0]] = body
    assert depth == 0
    return entries


def test_bibtex_has_one_balanced_entry_per_reference_in_order():
    keys = tuple(cit.REFERENCES)
    bib = cit.to_bibtex(keys)
    entries = _bib_entries(bib)
    assert tuple(entries) == keys
    assert re.findall(r"^@(\w+)\{", bib, flags=re.M) == [cit.REFERENCES[k].kind for k in keys]
    for key, body in entries.items():
        ref = cit.REFERENCES[key]
        assert f"year = {{{ref.year}}}" in body
        if ref.doi:
            assert f"doi = {{{ref.doi}}}" in body
    assert "pages = {1310--1320}" in entries["n4"]


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k == "href"]

    def handle_data(self, data):
        self.text.append(data)


def test_markdown_and_html_list_the_references_with_links():
    bp = cit.boilerplate("N4 (Tustison et al., 2010) <fast> & SyN (Avants et al., 2008).")
    assert bp.text.startswith("N4 [1] <fast> & SyN [2].")
    items = re.findall(r"^(\d+)\. (.*)$", bp.markdown, flags=re.M)
    assert [int(n) for n, _ in items] == [1, 2, 3]
    assert "Tustison NJ" in items[0][1]
    assert "https://doi.org/10.1109/TMI.2010.2046908" in items[0][1]
    parser = _Collect()
    parser.feed(bp.html)
    assert parser.tags.count("li") == 3
    assert parser.links[0] == "https://doi.org/10.1109/TMI.2010.2046908"
    assert "<fast>" in "".join(parser.text)  # escaped in the source, text once parsed
    assert "<fast>" not in bp.html


@pytest.mark.parametrize("settings, present, absent", [
    ({}, {"sklearn", "varoquaux", "phipson", "haufe", "platt", "nilearn"}, {"combat"}),
    ({"combat": True, "site_column": "site"}, {"combat", "combat_mri"}, set()),
    ({"n_permutations": 0}, {"sklearn"}, {"phipson"}),
])
def test_group_methods_cite_what_was_done(settings, present, absent):
    text = cit.group_methods(settings)
    assert cit.unknown_citations(text) == []
    bp = cit.boilerplate(text)
    assert present <= set(bp.keys) and not absent & set(bp.keys)
    assert "et al., 20" not in bp.text  # every citation became a number


def test_group_methods_state_the_settings():
    text = cit.group_methods({"n": 30, "n_responders": 14, "label_rule": "response = drop >= 0.5",
                              "n_repeats": 3, "n_outer": 4, "n_inner": 2, "c_grid": [0.5, 2],
                              "covariates": ["age", "sex", "tiv"], "standardize": True,
                              "n_permutations": 200, "smoothing_fwhm": 6})
    for fragment in ("of 30 participants (14 responders; response = drop >= 0.5)",
                     "3 repeats of 4-fold nested", "2 values (0.5 to 2) by 2-fold inner",
                     "regression on age, sex and tiv, then z-scoring", "200 label permutations",
                     "6 mm FWHM"):
        assert fragment in text, fragment


def test_participant_workflow_methods_are_fully_cited(tmp_path):
    """The real __desc__ texts: every author-year citation is known and numbered."""
    from ketabids.config import ParticipantConfig
    from ketabids.workflows import base

    wf = base.init_single_subject_wf(subject="01", session=None,
                                     t1w=tmp_path / "bids/sub-01/anat/sub-01_T1w.nii.gz",
                                     config=ParticipantConfig(
                                         bids_dir=tmp_path / "bids", output_dir=tmp_path / "out",
                                         processing="fast"))
    methods = wf.visit_desc()
    assert "(Tustison et al., 2010)" in methods
    assert cit.unknown_citations(methods) == []
    bp = cit.boilerplate(methods)
    assert "et al., 20" not in bp.text and "Friston, 2000" not in bp.text
    assert {"n4", "syn", "fast", "mni2009", "mni2011", "vbm", "nipype",
            "ketabids_study"} <= set(bp.keys)
    assert bp.keys[0] == "ketabids_study"  # "performed with ketabids X" comes first
