"""Citation boilerplate: a methods paragraph with numbered references, as Markdown, BibTeX, HTML.

The participant workflow describes itself: every :class:`~ketabids.workflows.LiterateWorkflow`
carries a ``__desc__`` with author-year citations such as ``(Tustison et al., 2010)``, and
``visit_desc()`` joins them into one paragraph. :func:`boilerplate` turns that text (or the
group-level text of :func:`group_methods`) into a citable paragraph:

1. every known author-year citation (:data:`REFERENCES`, ``cite_as``) is replaced by its number
   in order of first appearance; a parenthesis that held only citations becomes ``[1, 2]``,
   one that also held words keeps them: ``(SyN, Avants et al., 2008)`` -> ``(SyN) [2]``;
2. software named without a citation (``Nipype``, ``ANTs``, ``nilearn``, ``scikit-learn``,
   ``ketabids``: :data:`REFERENCES`, ``mentions``) gets its reference after its first mention;
3. the reference list is rendered as a numbered Markdown list, BibTeX entries and an HTML
   ordered list (with DOI links).

Unknown author-year citations are left as they are (and reported by :func:`unknown_citations`),
so a new ``__desc__`` never loses text. Pure functions: no files are read or written here
(:func:`ketabids.bids.logs.write_run_logs` writes ``CITATION.md/.bib/.html``).
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass

__all__ = ["Reference", "REFERENCES", "Boilerplate", "boilerplate", "number_citations",
           "group_methods", "unknown_citations", "to_markdown", "to_bibtex", "to_html"]

STUDY_DOI = "10.1038/s41398-026-04085-4"


@dataclass(frozen=True)
class Reference:
    """One bibliography entry.

    ``authors`` are ``"Family, Given"`` strings (``"others"`` ends a shortened list, as in
    BibTeX); ``cite_as`` are the in-text author-year forms that point to it; ``mentions`` are
    names (case-sensitive, whole words) whose first uncited use gets this reference.
    """

    key: str
    authors: tuple[str, ...]
    title: str
    year: int
    venue: str
    volume: str = ""
    pages: str = ""
    doi: str | None = None
    url: str | None = None
    kind: str = "article"  # BibTeX entry type: article, incollection, misc, software
    cite_as: tuple[str, ...] = ()
    mentions: tuple[str, ...] = ()

    def short_authors(self) -> str:
        """``"Ashburner J, Friston KJ"``: Vancouver style, at most 6 names, then ``et al.``"""
        names = [a for a in self.authors if a != "others"]
        shown = [_vancouver(a) for a in names[:6]]
        more = len(names) > 6 or "others" in self.authors
        return ", ".join(shown) + (", et al." if more else "")

    def link(self) -> str | None:
        return f"https://doi.org/{self.doi}" if self.doi else self.url


def _vancouver(author: str) -> str:
    if "," not in author:  # an organisation ("{...}" in BibTeX) or a single name
        return author.strip("{}")
    family, given = (part.strip() for part in author.split(",", 1))
    initials = "".join(p[0] for p in re.split(r"[\s.\-]+", given) if p)
    return f"{family} {initials}"


_R = Reference
#: Every reference ketabids can cite, by BibTeX key.
REFERENCES: dict[str, Reference] = {r.key: r for r in (
    _R("ketabids_study", (), "The study whose protocol ketabids implements (authors and title: "
       "see the DOI)", 2026, "Translational Psychiatry",
       doi=STUDY_DOI, kind="misc", cite_as=("ketabids study, 2026",), mentions=("ketabids",)),
    _R("n4", ("Tustison, Nicholas J.", "Avants, Brian B.", "Cook, Philip A.", "Zheng, Yuanjie",
              "Egan, Alexander", "Yushkevich, Paul A.", "Gee, James C."),
       "N4ITK: improved N3 bias correction", 2010, "IEEE Transactions on Medical Imaging",
       "29", "1310-1320", doi="10.1109/TMI.2010.2046908", cite_as=("Tustison et al., 2010",)),
    _R("syn", ("Avants, Brian B.", "Epstein, Charles L.", "Grossman, Murray", "Gee, James C."),
       "Symmetric diffeomorphic image registration with cross-correlation: evaluating automated "
       "labeling of elderly and neurodegenerative brain", 2008, "Medical Image Analysis", "12",
       "26-41", doi="10.1016/j.media.2007.06.004", cite_as=("Avants et al., 2008",),
       mentions=("ANTs",)),
    _R("atropos", ("Avants, Brian B.", "Tustison, Nicholas J.", "Wu, Jue", "Cook, Philip A.",
                   "Gee, James C."),
       "An open source multivariate framework for n-tissue segmentation with evaluation on "
       "public data", 2011, "Neuroinformatics", "9", "381-400",
       doi="10.1007/s12021-011-9109-y", cite_as=("Avants et al., 2011",)),
    _R("fast", ("Zhang, Yongyue", "Brady, Michael", "Smith, Stephen"),
       "Segmentation of brain MR images through a hidden Markov random field model and the "
       "expectation-maximization algorithm", 2001, "IEEE Transactions on Medical Imaging",
       "20", "45-57", doi="10.1109/42.906424", cite_as=("Zhang et al., 2001",)),
    _R("mni2009", ("Fonov, Vladimir S.", "Evans, Alan C.", "McKinstry, Robert C.",
                   "Almli, C. Robert", "Collins, D. Louis"),
       "Unbiased nonlinear average age-appropriate brain templates from birth to adulthood",
       2009, "NeuroImage", "47 (Suppl. 1)", "S102", doi="10.1016/S1053-8119(09)70884-5",
       cite_as=("Fonov et al., 2009",)),
    _R("mni2011", ("Fonov, Vladimir", "Evans, Alan C.", "Botteron, Kelly", "Almli, C. Robert",
                   "McKinstry, Robert C.", "Collins, D. Louis",
                   "{Brain Development Cooperative Group}"),
       "Unbiased average age-appropriate atlases for pediatric studies", 2011, "NeuroImage",
       "54", "313-327", doi="10.1016/j.neuroimage.2010.07.033",
       cite_as=("Fonov et al., 2011", "Fonov et al., 2009")),
    _R("nipype", ("Gorgolewski, Krzysztof", "Burns, Christopher D.", "Madison, Cindee",
                  "Clark, Dav", "Halchenko, Yaroslav O.", "Waskom, Michael L.",
                  "Ghosh, Satrajit S."),
       "Nipype: a flexible, lightweight and extensible neuroimaging data processing framework "
       "in Python", 2011, "Frontiers in Neuroinformatics", "5", "13",
       doi="10.3389/fninf.2011.00013", cite_as=("Gorgolewski et al., 2011",),
       mentions=("Nipype",)),
    _R("vbm", ("Ashburner, John", "Friston, Karl J."), "Voxel-based morphometry - the methods",
       2000, "NeuroImage", "11", "805-821", doi="10.1006/nimg.2000.0582",
       cite_as=("Ashburner & Friston, 2000", "Ashburner and Friston, 2000")),
    _R("nilearn", ("Abraham, Alexandre", "Pedregosa, Fabian", "Eickenberg, Michael",
                   "Gervais, Philippe", "Mueller, Andreas", "Kossaifi, Jean",
                   "Gramfort, Alexandre", "Thirion, Bertrand", "Varoquaux, Gael"),
       "Machine learning for neuroimaging with scikit-learn", 2014,
       "Frontiers in Neuroinformatics", "8", "14", doi="10.3389/fninf.2014.00014",
       cite_as=("Abraham et al., 2014",), mentions=("nilearn",)),
    _R("sklearn", ("Pedregosa, Fabian", "Varoquaux, Gael", "Gramfort, Alexandre",
                   "Michel, Vincent", "Thirion, Bertrand", "Grisel, Olivier",
                   "Blondel, Mathieu", "Prettenhofer, Peter", "Weiss, Ron", "Dubourg, Vincent",
                   "Vanderplas, Jake", "Passos, Alexandre", "Cournapeau, David",
                   "Brucher, Matthieu", "Perrot, Matthieu", "Duchesnay, Edouard"),
       "Scikit-learn: machine learning in Python", 2011, "Journal of Machine Learning Research",
       "12", "2825-2830", url="https://jmlr.org/papers/v12/pedregosa11a.html",
       cite_as=("Pedregosa et al., 2011",), mentions=("scikit-learn",)),
    _R("platt", ("Platt, John C.",), "Probabilistic outputs for support vector machines and "
       "comparisons to regularized likelihood methods", 1999, "Advances in Large Margin "
       "Classifiers (MIT Press)", "", "61-74", kind="incollection", cite_as=("Platt, 1999",)),
    _R("phipson", ("Phipson, Belinda", "Smyth, Gordon K."), "Permutation p-values should never "
       "be zero: calculating exact p-values when permutations are randomly drawn", 2010,
       "Statistical Applications in Genetics and Molecular Biology", "9", "39",
       doi="10.2202/1544-6115.1585", cite_as=("Phipson & Smyth, 2010",
                                              "Phipson and Smyth, 2010")),
    _R("haufe", ("Haufe, Stefan", "Meinecke, Frank", "Görgen, Kai", "Dähne, Sven",
                 "Haynes, John-Dylan", "Blankertz, Benjamin", "Bießmann, Felix"),
       "On the interpretation of weight vectors of linear models in multivariate neuroimaging",
       2014, "NeuroImage", "87", "96-110", doi="10.1016/j.neuroimage.2013.10.067",
       cite_as=("Haufe et al., 2014",)),
    _R("varoquaux", ("Varoquaux, Gael",), "Cross-validation failure: small sample sizes lead "
       "to large error bars", 2018, "NeuroImage", "180", "68-77",
       doi="10.1016/j.neuroimage.2017.06.061", cite_as=("Varoquaux, 2018",)),
    _R("combat", ("Johnson, W. Evan", "Li, Cheng", "Rabinovic, Ariel"),
       "Adjusting batch effects in microarray expression data using empirical Bayes methods",
       2007, "Biostatistics", "8", "118-127", doi="10.1093/biostatistics/kxj037",
       cite_as=("Johnson et al., 2007",)),
    _R("combat_mri", ("Fortin, Jean-Philippe", "Cullen, Nicholas", "Sheline, Yvette I.",
                      "others"),
       "Harmonization of cortical thickness measurements across scanners and sites", 2018,
       "NeuroImage", "167", "104-120", doi="10.1016/j.neuroimage.2017.11.024",
       cite_as=("Fortin et al., 2018",)),
)}

# "Fonov et al., 2009" (the ketabids __desc__ form) cites both MNI 2009 papers, as TemplateFlow
# asks for the MNI ICBM 2009 templates.
_CITE_FORMS: dict[str, tuple[str, ...]] = {}
for _ref in REFERENCES.values():
    for _form in _ref.cite_as:
        _CITE_FORMS.setdefault(_form, ())
        _CITE_FORMS[_form] += (_ref.key,)

_FORM_RE = re.compile("|".join(sorted((re.escape(f) for f in _CITE_FORMS), key=len,
                                      reverse=True)))
_PAREN_RE = re.compile(r"\(([^()]*)\)")
_NAME = r"[A-Z][A-Za-zÀ-ÿ\-]+"
_AUTHOR_YEAR_RE = re.compile(rf"\b{_NAME}(?: et al\.| (?:&|and) {_NAME})?, (?:19|20)\d\d[a-z]?\b")


@dataclass(frozen=True)
class Boilerplate:
    """The methods paragraph (Markdown, numbered citations) and its references in 3 formats."""

    text: str
    keys: tuple[str, ...]
    markdown: str
    bibtex: str
    html: str


def unknown_citations(text: str) -> list[str]:
    """Author-year citations in ``text`` that :data:`REFERENCES` does not know.

    >>> unknown_citations("N4 (Tustison et al., 2010) and MAGIC (Doe et al., 2031).")
    ['Doe et al., 2031']
    """
    return [m for m in _AUTHOR_YEAR_RE.findall(text) if m not in _CITE_FORMS]


def _cite_mentions(text: str) -> str:
    """Add ``(Author et al., year)`` after the first mention of software cited nowhere else.

    >>> _cite_mentions("Made with Nipype and ANTs (antspyx).")
    'Made with Nipype (Gorgolewski et al., 2011) and ANTs (antspyx; Avants et al., 2008).'
    """
    for ref in REFERENCES.values():
        if not ref.mentions or any(form in text for form in ref.cite_as):
            continue
        for name in ref.mentions:
            # the name, and its version if one follows ("ketabids 0.1.0")
            match = re.search(rf"(?<![\w/.-]){re.escape(name)}(?![\w-])(?: v?\d[\w.+-]*\w)?",
                              text)
            if not match:
                continue
            end, form = match.end(), ref.cite_as[0]
            group = re.match(r" \(([^()]*)\)", text[end:])
            if group:  # "ANTs (antspyx)" -> "ANTs (antspyx; Avants et al., 2008)"
                close = end + group.end() - 1
                text = text[:close] + f"; {form}" + text[close:]
            else:
                text = text[:end] + f" ({form})" + text[end:]
            break
    return text


def number_citations(text: str, *, extra: tuple[str, ...] = ()) -> tuple[str, tuple[str, ...]]:
    """Replace known author-year citations by ``[n]`` (first-appearance order).

    Returns ``(text, keys)``; ``keys[n - 1]`` is reference ``n``. ``extra`` keys (e.g. the
    study) are appended to the list when not cited in the text.

    >>> number_citations("N4 (Tustison et al., 2010), SyN (SyN, Avants et al., 2008), "
    ...                  "N4 again (Tustison et al., 2010).")
    ('N4 [1], SyN (SyN) [2], N4 again [1].', ('n4', 'syn'))
    """
    keys: list[str] = []

    def numbers(form: str) -> list[int]:
        out = []
        for key in _CITE_FORMS[form]:
            if key not in keys:
                keys.append(key)
            out.append(keys.index(key) + 1)
        return out

    def bracket(nums: list[int]) -> str:
        return "[" + ", ".join(str(n) for n in sorted(dict.fromkeys(nums))) + "]"

    def paren(match: re.Match) -> str:
        inner = match.group(1)
        if not _FORM_RE.search(inner):
            return match.group(0)
        nums: list[int] = []
        rest = []
        for part in re.split(r";\s*", inner):
            found = _FORM_RE.findall(part)
            for form in found:
                nums.extend(numbers(form))
            words = _FORM_RE.sub("", part).strip(" ,;")
            if words:
                rest.append(words)
        return (f"({'; '.join(rest)}) " if rest else "") + bracket(nums)

    text = _PAREN_RE.sub(paren, _cite_mentions(text))
    # citations outside parentheses ("as in Haufe et al., 2014")
    text = _FORM_RE.sub(lambda m: bracket(numbers(m.group(0))), text)
    for key in extra:
        if key not in keys:
            keys.append(key)
    return text, tuple(keys)


# ------------------------------------------------------------------------------ rendering
def _entry_text(ref: Reference) -> str:
    if not ref.authors:
        return f"{ref.title}. {ref.venue} ({ref.year})."
    where = ref.venue
    if ref.volume:
        where += f" {ref.volume}"
    if ref.pages:
        where += f":{ref.pages}" if ref.volume else f", pp. {ref.pages}"
    return f"{ref.short_authors()} ({ref.year}). {ref.title}. {where}."


def to_markdown(text: str, keys) -> str:
    """``## Methods`` paragraph + ``### References`` numbered list (DOI links)."""
    lines = ["## Methods", "", text.strip(), "", "### References", ""]
    for n, key in enumerate(keys, start=1):
        ref = REFERENCES[key]
        link = ref.link()
        suffix = f" [{('doi:' + ref.doi) if ref.doi else link}]({link})" if link else ""
        lines.append(f"{n}. {_entry_text(ref)}{suffix}")
    return "\n".join(lines) + "\n"


def _bib_escape(value: str) -> str:
    return value.replace("&", r"\&").replace("%", r"\%").replace("_", r"\_")


def to_bibtex(keys) -> str:
    """BibTeX entries of ``keys`` (in that order)."""
    blocks = []
    for key in keys:
        ref = REFERENCES[key]
        venue_field = {"article": "journal", "incollection": "booktitle"}.get(ref.kind,
                                                                               "howpublished")
        fields = [("author", " and ".join(ref.authors))] if ref.authors else []
        fields += [("title", "{" + ref.title + "}"), (venue_field, ref.venue),
                   ("year", str(ref.year))]
        if ref.volume:
            fields.append(("volume", ref.volume))
        if ref.pages:
            fields.append(("pages", ref.pages.replace("-", "--")))
        if ref.doi:
            fields.append(("doi", ref.doi))
        if ref.url:
            fields.append(("url", ref.url))
        body = ",\n".join(
            f"    {name} = {{{value if name in ('doi', 'url') else _bib_escape(value)}}}"
            for name, value in fields)
        blocks.append(f"@{ref.kind}{{{key},\n{body}\n}}")
    return "\n\n".join(blocks) + "\n"


def to_html(text: str, keys) -> str:
    """A self-contained HTML page: the paragraph and an ordered reference list."""
    items = []
    for key in keys:
        ref = REFERENCES[key]
        link = ref.link()
        label = f"doi:{ref.doi}" if ref.doi else link
        anchor = f' <a href="{html.escape(link)}">{html.escape(label)}</a>' if link else ""
        items.append(f"<li>{html.escape(_entry_text(ref))}{anchor}</li>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>ketabids: methods and references</title></head><body>\n"
            f"<h2>Methods</h2>\n<p>{html.escape(text.strip())}</p>\n<h3>References</h3>\n<ol>\n"
            + "\n".join(items) + "\n</ol>\n</body></html>\n")


def boilerplate(methods_text: str, *, cite_study: bool = True) -> Boilerplate:
    """The methods text with numbered citations, in Markdown, BibTeX and HTML.

    ``cite_study`` appends the study ketabids implements to the references (if not cited).

    >>> bp = boilerplate("Bias was corrected with N4 (Tustison et al., 2010) in Nipype.")
    >>> bp.text
    'Bias was corrected with N4 [1] in Nipype [2].'
    >>> bp.keys
    ('n4', 'nipype', 'ketabids_study')
    """
    text, keys = number_citations(" ".join(methods_text.split()),
                                  extra=("ketabids_study",) if cite_study else ())
    return Boilerplate(text=text, keys=keys, markdown=to_markdown(text, keys),
                       bibtex=to_bibtex(keys), html=to_html(text, keys))


# ------------------------------------------------------------------------- group methods
def group_methods(settings: dict) -> str:
    """Author-year methods text of a group training run from its settings.

    ``settings`` keys (the model manifest's names where they exist): ``template``,
    ``smoothing_fwhm``, ``analysis_resolution``, ``mask_source`` ("template"/"sample-mean"),
    ``mask_threshold``, ``n`` and ``n_responders``, ``label_rule`` (text), ``n_repeats``,
    ``n_outer``, ``n_inner``, ``c_grid``, ``covariates`` (list), ``site_column``, ``combat``,
    ``standardize``, ``n_permutations``, ``version``. Missing keys fall back to the defaults.

    >>> text = group_methods({"n": 30, "n_responders": 15, "n_permutations": 200})
    >>> "(Haufe et al., 2014)" in text and "200 label permutations" in text
    True
    """
    from ketabids.templates import DEFAULT_TEMPLATE

    s = {"template": DEFAULT_TEMPLATE, "smoothing_fwhm": 8.0, "analysis_resolution": 2.0,
         "mask_source": "template", "mask_threshold": 0.2, "n_repeats": 10, "n_outer": 10,
         "n_inner": 5, "c_grid": [2.0 ** k for k in range(-6, 5)], "covariates": [],
         "site_column": None, "combat": False, "standardize": False, "n_permutations": 1000,
         "label_rule": None, "version": None, **{k: v for k, v in settings.items()
                                                  if v is not None}}
    grid = [float(c) for c in s["c_grid"]]
    who = ""
    if s.get("n") is not None:
        who = f" of {s['n']} participants"
        if s.get("n_responders") is not None:
            who += f" ({s['n_responders']} responders"
            who += f"; {s['label_rule']})" if s["label_rule"] else ")"
    version = f" {s['version']}" if s["version"] else ""
    text = (
        f"Group analyses were run with ketabids{version}. Jacobian-modulated grey-matter maps"
        f"{who} in {s['template']} space were smoothed with an isotropic Gaussian kernel of "
        f"{float(s['smoothing_fwhm']):g} mm FWHM and resampled to a "
        f"{float(s['analysis_resolution']):g} mm grid; the voxels of a grey-matter mask ("
        + ("template GM prior" if s["mask_source"] == "template"
           else "mean GM map of all participants")
        + f" > {float(s['mask_threshold']):g}, defined without labels) were the features. "
        "A linear support vector classifier with balanced class weights (Pedregosa et al., "
        f"2011) was evaluated with {s['n_repeats']} repeats of {s['n_outer']}-fold nested "
        f"cross-validation, stratified by label{' and site' if s['site_column'] else ''}; "
        f"C was chosen among {len(grid)} values ({min(grid):g} to {max(grid):g}) by "
        f"{s['n_inner']}-fold inner cross-validation on the training folds only. "
    )
    steps = []
    if s["combat"]:
        steps.append("ComBat site harmonisation (Johnson et al., 2007; Fortin et al., 2018)")
    covs = list(s["covariates"] or [])
    if len(covs) > 1:
        steps.append(f"regression on {', '.join(covs[:-1])} and {covs[-1]}")
    else:
        steps.append(f"regression on {covs[0]}" if covs else
                     "regression on the intercept (centring)")
    if s["standardize"]:
        steps.append("z-scoring of each voxel")
    text += ("Within every training fold, " + ", then ".join(steps)
             + (" were" if len(steps) > 1 else " was") + " fitted on the "
             "training participants only and applied to the test participants. "
             "Probabilities come from a Platt sigmoid (Platt, 1999) fitted on inner "
             "cross-validation decisions. Balanced accuracy (BAC) was computed from all "
             "out-of-fold predictions of all repeats (pooled), with a 95% interval from a "
             "stratified subject-cluster bootstrap, since cross-validated accuracies carry "
             "wide error bars at these sample sizes (Varoquaux, 2018). ")
    if int(s["n_permutations"]):
        text += (f"Its p-value came from {int(s['n_permutations'])} label permutations, each "
                 "re-running the whole nested cross-validation, as p = (1 + #null >= observed) "
                 "/ (1 + permutations) (Phipson & Smyth, 2010). ")
    text += ("Voxel weights were summarised over all outer models (mean, cross-validation "
             "ratio, sign consistency), and the final model, refitted on all participants, was "
             "turned into an activation pattern (Haufe et al., 2014). Figures were made with "
             "nilearn.")
    return text


def settings_from_manifest(manifest: dict, *, n_permutations: int = 0,
                           label_rule: str | None = None) -> dict:
    """The :func:`group_methods` settings of a trained model's manifest (the one source of the
    group methods text: the report's methods section, the run's CITATION files)."""
    features, cv = manifest.get("features", {}), manifest.get("cv", {})
    site, training = manifest.get("site", {}), manifest.get("training", {})
    return {
        "template": manifest.get("template"),
        "smoothing_fwhm": features.get("smoothing_fwhm"),
        "analysis_resolution": features.get("analysis_resolution"),
        "mask_source": features.get("mask_source"),
        "mask_threshold": features.get("mask_threshold"),
        "n": training.get("n"), "n_responders": training.get("n_responders"),
        "label_rule": label_rule,
        "n_repeats": cv.get("n_repeats"), "n_outer": cv.get("n_outer"),
        "n_inner": cv.get("n_inner"), "c_grid": cv.get("C_grid") or cv.get("c_grid"),
        "covariates": manifest.get("covariates", {}).get("names"),
        "site_column": site.get("column"), "combat": site.get("combat"),
        "standardize": cv.get("standardize"), "n_permutations": int(n_permutations or 0),
        "version": manifest.get("software", {}).get("ketabids")
        or manifest.get("pipeline", {}).get("version"),
    }
