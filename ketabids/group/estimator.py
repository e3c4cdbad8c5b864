"""The classifier: a scikit-learn estimator for a linear SVC on VBM features, solved in kernel
space, that selects C by inner cross-validation and refits.

``KetaSVC(C_grid, cv).fit(X, y, covariates=None, sites=None)``:

1. preprocessing, fitted on the training rows of every split (:mod:`ketabids.group.preprocessing`):
   ComBat (``harmonize``; needs ``sites``) -> regression of every feature on [1, covariates]
   (without covariates: centring) -> z-scoring (``standardize``);
2. kernel scaling (``scale_kernel``, on by default): each training set's kernel is divided by
   its critical-C scale (:func:`kernel_scales`, :class:`KernelScaler` in feature space), so the
   C grid runs from just above the class-mean solution (every participant a bounded support
   vector) towards the hard margin for any number of voxels; unscaled, p >> n VBM features put
   every C of the default grid on the hard-margin solution and C is not chosen;
3. C: the value of ``C_grid`` with the best mean balanced accuracy over the splits of ``cv``
   (ties -> the SMALLEST C; a one-value grid skips the search). ``cv`` is any scikit-learn
   splitter (default ``StratifiedKFold(5)``); it is called as ``cv.split(X, y, groups=sites)``,
   so ``GroupKFold``/``LeaveOneGroupOut`` split by site;
4. refit on all rows with that C (class weights balanced); ``predict_proba`` is a Platt sigmoid
   fitted on stratified ``calibration_folds``-fold CV decision values of the training rows.

Covariates and sites are passed to ``fit`` and to every prediction method (same order of
columns). Kernel space: centring and covariate regression are linear maps ``M`` in sample
space, so each split's kernel is ``M K M^T`` of one ``K = X X^T``; with ComBat or z-scoring
each training set gets its own kernel. Duals are solved exactly (:mod:`ketabids.group.kernels`),
so decision values equal scikit-learn's ``SVC(kernel='linear')`` pipeline (tests).
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.model_selection import check_cv
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from ketabids.errors import BadDataError, UsageError
from ketabids.group.cv import stratified_folds
from ketabids.group.kernels import (
    balanced_weights,
    platt_fit,
    platt_predict,
    residual_kernels,
    solve_c_path,
    solve_dual,
)
from ketabids.group.metrics import balanced_accuracy_sets
from ketabids.group.preprocessing import apply_preprocessing, design_matrix, fit_preprocessing

__all__ = ["DEFAULT_C_GRID", "KetaSVC", "check_groups", "KernelProvider", "c_path_decisions",
           "linear_kernel", "KernelScaler", "kernel_scales", "critical_gap", "CRITICAL_C"]

#: The C grid: 2^-6 .. 2^4 (NeuroMiner's default for classification).
DEFAULT_C_GRID = tuple(float(2.0 ** k) for k in range(-6, 5))


def check_groups(covariates, sites, n, *, harmonize=False):
    """Check and convert the covariates and sites given to :class:`KetaSVC`.

    This is the one place that checks that ComBat has the site of every participant.

    Parameters
    ----------
    covariates : array-like of shape (n, k) or (n,), or None
        Covariates, numeric (categorical ones already one-hot encoded).
    sites : array-like of shape (n,) or None
        Site of each participant.
    n : int
        Number of participants (rows of the features).
    harmonize : bool
        Whether ComBat will be fitted (then ``sites`` is required).

    Returns
    -------
    covariates : ndarray of shape (n, k) or None
        Float covariates.
    sites : ndarray of shape (n,) or None
        Sites as strings.

    Raises
    ------
    BadDataError
        Non-finite covariates, or a number of sites other than ``n``.
    UsageError
        ``harmonize`` without ``sites``.

    Examples
    --------
    >>> cov, sites = check_groups([1, 2, 3], ["A", "A", "B"], 3)
    >>> cov.shape, sites.tolist()
    ((3, 1), ['A', 'A', 'B'])
    """
    if covariates is not None:
        covariates = np.asarray(covariates, float).reshape(n, -1)
        if not np.isfinite(covariates).all():
            raise BadDataError("covariates contain NaN/inf; impute or drop those subjects")
    if sites is not None:
        sites = np.asarray(sites).astype(str)
        if sites.shape != (n,):
            raise BadDataError(f"sites: expected {n} values, got shape {sites.shape}")
    if harmonize and sites is None:
        raise UsageError("ComBat harmonisation needs the site of every participant: pass "
                         "sites (the CLI: --site-column COLUMN)")
    return covariates, sites


def linear_kernel(X, chunk=16384):
    """The linear kernel ``X X^T`` in float64, accumulated over voxel chunks.

    Summing chunk products keeps memory at one float64 chunk instead of a float64 copy of a
    float32 ``X`` (VBM features: n x ~200,000).

    Parameters
    ----------
    X : ndarray of shape (n, p)
        Features (any float dtype).
    chunk : int
        Columns per chunk.

    Returns
    -------
    ndarray of shape (n, n)
        The Gram matrix.

    Examples
    --------
    >>> X = np.arange(6, dtype=np.float32).reshape(2, 3)
    >>> linear_kernel(X, chunk=2).tolist()
    [[5.0, 14.0], [14.0, 50.0]]
    """
    n, p = X.shape
    K = np.zeros((n, n))
    for start in range(0, p, chunk):
        xc = np.asarray(X[:, start:start + chunk], np.float64)
        K += xc @ xc.T
    return K


#: The critical C of a scaled kernel (:func:`kernel_scales`): the default grid's smallest value,
#: 2^-6, is twice it, so every C of the grid lies on the regularisation path.
CRITICAL_C = 2.0 ** -7


def critical_gap(K, y01, mask) -> np.ndarray:
    """The gap ``max_{i in R} g_i - min_{i in N} g_i``, ``g = K (y * w)``, of training sets.

    ``R``/``N`` are the responders / non-responders of ``mask``, ``y`` = +-1 and ``w`` the
    balanced class weights. Below ``C = 2 / gap`` every training participant is a bounded
    support vector (all ``alpha_i = C w_i`` satisfy the KKT conditions ``y_i f_i <= 1`` for some
    intercept): the model is the balanced class-mean direction whatever C, and only the
    intercept moves. That is the critical C; from it up to the hard margin lies the
    regularisation path.

    Parameters
    ----------
    K : ndarray of shape (T, n, n)
        One kernel per training set.
    y01 : ndarray of shape (n,) or (T, n)
        Labels, 1 = responder, 0 = non-responder.
    mask : ndarray of shape (T, n)
        Training rows of each set.

    Returns
    -------
    ndarray of shape (T,)
        The gap of each training set (NaN or inf when a class is absent).
    """
    mask = np.asarray(mask, bool)
    y01 = np.broadcast_to(np.asarray(y01), mask.shape)
    yy = np.where(mask, 2.0 * y01 - 1.0, 0.0)
    g = np.einsum("tij,tj->ti", K, yy * balanced_weights(y01, mask))
    with np.errstate(invalid="ignore"):
        top = np.where(mask & (y01 == 1), g, -np.inf).max(-1)
        bottom = np.where(mask & (y01 == 0), g, np.inf).min(-1)
        return top - bottom


def kernel_scales(Ks, masks, y01=None) -> np.ndarray:
    """The scale of each training set's kernel (divide kernel t by it).

    With labels (the classifier): ``CRITICAL_C * gap / 2`` (:func:`critical_gap`), so the scaled
    kernel's critical C is :data:`CRITICAL_C` and the C grid 2^-6 .. 2^4 runs from just above the
    class-mean solution towards the hard margin, whatever the number of voxels or the GM units
    (as glmnet starts its lasso path at the smallest penalty that keeps every coefficient at 0).
    Without it, p >> n VBM features put every C of the grid on the hard-margin solution. Without
    labels (the audit's multi-class site model): the mean squared norm of the training rows,
    ``mean(diag(K_t))``. Only training rows enter (no leakage); 1 where the scale is not a
    positive number. The measurements behind the scaling: ``docs/benchmarks.md``
    ("Site-robust validation and C selection").

    Parameters
    ----------
    Ks : ndarray of shape (T, n, n)
        One kernel per training set.
    masks : ndarray of shape (T, n)
        Training rows of each set.
    y01 : ndarray of shape (n,) or (T, n), or None
        Labels (1/0); ``None``: the label-free scale.

    Returns
    -------
    ndarray of shape (T,)
        Positive scales.

    Examples
    --------
    >>> K = np.diag([1.0, 4.0, 9.0])[None]
    >>> kernel_scales(K, np.ones((1, 3), bool)).tolist()  # mean squared norm of the rows
    [4.666666666666667]
    """
    masks = np.asarray(masks, bool)
    if y01 is None:
        diag = np.einsum("tii->ti", Ks)
        s = (diag * masks).sum(1) / np.maximum(masks.sum(1), 1)
    else:
        s = CRITICAL_C * critical_gap(Ks, y01, masks) / 2.0
    return np.where(np.isfinite(s) & (s > 0), s, 1.0)


class KernelScaler(TransformerMixin, BaseEstimator):
    """Divide features by ``sqrt(scale_)``, the :func:`kernel_scales` of the training rows.

    The feature-space counterpart of ``KetaSVC(scale_kernel=True)`` (its last preprocessing
    step, fitted within every training set): in a scikit-learn pipeline before
    ``SVC(kernel="linear")`` it reproduces the engine's models, which the tests check.

    Attributes
    ----------
    scale_ : float
        With ``y`` at fit: the critical-C scale (the scaled data's critical C is
        :data:`CRITICAL_C`); without: the mean squared norm of the training rows.
    n_features_in_ : int
        Number of features seen at fit.

    Examples
    --------
    >>> X = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> KernelScaler().fit(X).scale_
    2.5
    """

    def fit(self, X, y=None):
        """Compute ``scale_`` from the rows of ``X`` (and, if given, the labels ``y``).

        Parameters
        ----------
        X : array-like of shape (n, p)
            Training features (already preprocessed).
        y : array-like of shape (n,) or None
            Binary labels; the larger value is the positive class.

        Returns
        -------
        KernelScaler
            self.
        """
        X = validate_data(self, X, dtype=np.float64)
        K = (X @ X.T)[None]
        mask = np.ones((1, X.shape[0]), bool)
        if y is None:
            self.scale_ = float(kernel_scales(K, mask)[0])
        else:
            y = np.asarray(y)
            y01 = (y == np.unique(y)[-1]).astype(np.int64)
            self.scale_ = float(kernel_scales(K, mask, y01)[0])
        return self

    def transform(self, X):
        """Features divided by ``sqrt(scale_)``.

        Parameters
        ----------
        X : array-like of shape (n, p)
            Features with the columns seen at fit.

        Returns
        -------
        ndarray of shape (n, p)
            Scaled features (float64).
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return X / np.sqrt(self.scale_)


class KernelProvider:
    """Kernels of the preprocessed data for many training sets.

    Without ComBat and z-scoring the preprocessing is a linear map of sample space, so every
    training set's kernel derives from one ``K = X X^T``; otherwise each training set gets its
    own. With ``scale_kernel`` each kernel is divided by :func:`kernel_scales` of its training
    set.

    Parameters
    ----------
    X : ndarray of shape (n, p)
        Features.
    covariates : ndarray of shape (n, k) or None
        Covariates regressed out within each training set.
    sites : ndarray of shape (n,) or None
        Sites (for ComBat).
    standardize, harmonize, scale_kernel : bool
        As :class:`KetaSVC`.
    gram : ndarray of shape (n, n) or None
        ``X X^T`` when the caller already has it (:func:`linear_kernel` of the same X; used
        as is, not copied).
    """

    def __init__(self, X, covariates, sites, *, standardize=False, harmonize=False,
                 scale_kernel=True, gram=None):
        self.X, self.cov, self.sites = X, covariates, sites
        self.Z = design_matrix(covariates, X.shape[0])
        self.standardize, self.harmonize = standardize, harmonize
        self.scale_kernel = bool(scale_kernel)
        self.per_fold = standardize or harmonize
        if not self.per_fold:
            self.K = linear_kernel(X) if gram is None else gram

    def fit_params(self, rows):
        return fit_preprocessing(self.X, self.Z, self.cov, self.sites, rows,
                                 standardize=self.standardize, harmonize=self.harmonize)

    def kernels(self, masks, keep=None, y01=None):
        """Kernels (T, n, n) for training masks (T, n); ``keep`` (bool per mask) keeps what
        :meth:`weights` needs; ``y01``: the labels the kernels will be fitted to (their
        scales depend on them, :func:`kernel_scales`). The scales applied are in the returned
        ``aux[2]``."""
        Ks, aux = self._kernels(masks, keep)
        scales = np.ones(len(masks))
        if self.scale_kernel:
            scales = kernel_scales(Ks, masks, y01)
            Ks /= scales[:, None, None]
        return Ks, (*aux, scales)

    def _kernels(self, masks, keep=None):
        if not self.per_fold:
            Ks, G = residual_kernels(self.K, self.Z, masks)
            return Ks, ("linear", G)
        Ks = np.empty((len(masks), self.X.shape[0], self.X.shape[0]))
        kept = {}
        for t, m in enumerate(masks):
            params = self.fit_params(m)
            Xt = apply_preprocessing(self.X, self.Z, self.cov, self.sites, params)
            Ks[t] = Xt @ Xt.T
            if keep is not None and keep[t]:
                kept[t] = params              # small; features are re-derived for weights
        return Ks, ("per_fold", kept)

    def weights(self, aux, t, beta_full):
        """Primal weights of model t: ``(v, None)`` with ``w = v X`` (linear maps) or
        ``(None, w)`` in the preprocessed feature space."""
        kind, data, scales = aux
        beta_full = beta_full / scales[t]
        if kind == "linear":
            G = data[t]
            return beta_full - G.T @ (self.Z.T @ beta_full), None
        Xt = apply_preprocessing(self.X, self.Z, self.cov, self.sites, data[t])
        return None, Xt.T @ beta_full


def gather(Ks, masks, y):
    """The training sub-kernels of ``masks``, padded to one size for the batched solver.

    Parameters
    ----------
    Ks : ndarray of shape (T, n, n)
        Kernels.
    masks : ndarray of shape (T, n)
        Training rows of each set.
    y : ndarray of shape (n,)
        Labels 1/0.

    Returns
    -------
    Ktt : ndarray of shape (T, m, m)
        Training sub-kernels (``m`` = the largest training set).
    yy : ndarray of shape (T, m)
        Labels +-1, 0 in the padding.
    w : ndarray of shape (T, m)
        Balanced class weights, 0 in the padding.
    idx : ndarray of shape (T, m)
        Row of each entry in the full data.
    valid : ndarray of shape (T, m)
        False in the padding.
    """
    T = len(masks)
    sizes = masks.sum(1)
    m = int(sizes.max())
    idx = np.zeros((T, m), np.int64)
    valid = np.zeros((T, m), bool)
    for t in range(T):
        ii = np.flatnonzero(masks[t])
        idx[t, : ii.size] = ii
        valid[t, : ii.size] = True
    ar = np.arange(T)[:, None, None]
    Ktt = Ks[ar, idx[:, :, None], idx[:, None, :]]
    y01 = y[idx]
    yy = np.where(valid, 2.0 * y01 - 1, 0.0)
    w = balanced_weights(y01, valid)
    return Ktt, yy, w, idx, valid


def c_path_decisions(Ks, masks, tests, y, C_grid, tol):
    """Fit every training mask at every C of the (ascending) grid and score its test rows.

    Parameters
    ----------
    Ks : ndarray of shape (T, n, n)
        Kernels of the preprocessed data, one per training set.
    masks, tests : ndarray of shape (T, n)
        Training and test rows of each split.
    y : ndarray of shape (n,)
        Labels 1/0.
    C_grid : ndarray of shape (L,)
        Ascending C values.
    tol : float
        Tolerance of the dual solver.

    Returns
    -------
    decisions : ndarray of shape (T, L, n)
        Decision values of every row.
    bac : ndarray of shape (T, L)
        Balanced accuracy on the test rows.
    fallbacks : int
        Number of problems handed to libsvm.
    """
    n = y.size
    Ktt, yy, w, idx, valid = gather(Ks, masks, y)
    beta, b, fb = solve_c_path(Ktt, yy, w, C_grid, tol=tol)
    beta_full = np.zeros((len(masks), len(C_grid), n))
    for t in range(len(masks)):
        nv = valid[t].sum()
        beta_full[t][:, idx[t, :nv]] = beta[t][:, :nv]
    f = (Ks @ beta_full.transpose(0, 2, 1)).transpose(0, 2, 1) + b[:, :, None]
    return f, balanced_accuracy_sets(y, f > 0, tests), fb


def check_c_grid(C_grid) -> np.ndarray:
    """The C grid, sorted ascending.

    Parameters
    ----------
    C_grid : float or sequence of float
        C values.

    Returns
    -------
    ndarray
        Sorted float C values.

    Raises
    ------
    ValueError
        An empty grid or a C that is not positive.

    Examples
    --------
    >>> check_c_grid([1, 0.25]).tolist()
    [0.25, 1.0]
    """
    grid = np.asarray(sorted(float(c) for c in np.atleast_1d(C_grid)))
    if not grid.size or grid.min() <= 0:
        raise ValueError(f"C_grid {tuple(grid)}: C values must be positive")
    return grid


class KetaSVC(ClassifierMixin, BaseEstimator):
    """Linear SVC (balanced class weights) with in-fold preprocessing and C chosen by inner CV.

    The steps are those of the module docstring. Every fitted attribute is a numpy array or a
    python scalar, so that skops can save and load the model without trusting custom types.

    Parameters
    ----------
    C_grid : sequence of float
        C values searched by the inner CV (default 2^-6 .. 2^4, :data:`DEFAULT_C_GRID`); one
        value skips the search.
    cv : int, cross-validation splitter or None
        Inner CV (``None``: ``StratifiedKFold(5)``); called as ``cv.split(X, y, groups)``.
    standardize : bool
        z-score every feature (fitted within each training set).
    harmonize : bool
        ComBat across sites (fitted within each training set); ``fit`` then needs ``sites``.
    calibration_folds : int
        Folds of the stratified CV whose decision values fit the Platt sigmoid (at most the
        smaller class size; below 2 the sigmoid is fitted in-sample).
    tol : float
        Tolerance of the exact dual solver.
    random_state : int
        Seed of the calibration folds.
    scale_kernel : bool
        Divide each training set's kernel by its critical-C scale (:func:`kernel_scales`), so
        that the C grid spans the regularisation path; ``False`` uses the raw kernel.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        The labels; ``classes_[1]`` is the positive class (responder).
    C_ : float
        The chosen C (ties: the smallest).
    C_grid_ : ndarray
        The sorted grid.
    cv_scores_ : ndarray or None
        Mean inner balanced accuracy per C (None for a one-value grid).
    coef_ : ndarray of shape (1, p)
        Primal weights in the preprocessed feature space (the kernel scale included).
    intercept_ : ndarray of shape (1,)
        Intercept.
    dual_coef_, support_ : ndarray
        Non-zero dual coefficients ``alpha_i y_i`` and their training rows.
    kernel_scale_ : float or None
        The scale the final model's kernel was divided by (None without ``scale_kernel``).
    cov_coef_, scale_, combat_, n_covariates_
        Fitted preprocessing (covariate regression, z-scoring, ComBat).
    platt_a_, platt_b_ : float
        Platt sigmoid of ``predict_proba``.

    See Also
    --------
    KernelScaler : the kernel scaling in feature space, for scikit-learn pipelines.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 20)
    >>> X = rng.normal(size=(40, 30)) + 1.5 * y[:, None] * (np.arange(30) < 5)
    >>> clf = KetaSVC(C_grid=(0.125, 1.0)).fit(X, y)
    >>> clf.C_ in (0.125, 1.0), clf.coef_.shape
    (True, (1, 30))
    >>> bool((clf.predict(X) == y).mean() > 0.9)
    True
    """

    def __init__(self, C_grid=DEFAULT_C_GRID, cv=None, standardize=False, harmonize=False,
                 calibration_folds=5, tol=1e-10, random_state=0, scale_kernel=True):
        self.C_grid = C_grid
        self.cv = cv
        self.standardize = standardize
        self.harmonize = harmonize
        self.scale_kernel = scale_kernel
        self.calibration_folds = calibration_folds
        self.tol = tol
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        tags.classifier_tags.poor_score = False
        return tags

    def fit(self, X, y, covariates=None, sites=None, groups=None):
        """Select C by inner CV (``cv`` split with ``groups``, default ``sites``) and refit.

        Parameters
        ----------
        X : array-like of shape (n, p)
            Features (e.g. smoothed, modulated GM maps in the analysis mask).
        y : array-like of shape (n,)
            Binary labels.
        covariates : array-like of shape (n, k) or None
            Regressed out of the features within every training set.
        sites : array-like of shape (n,) or None
            Site of each participant: ComBat with ``harmonize``, stratification by the
            default splitter, groups of group splitters unless ``groups`` is given.
        groups : array-like of shape (n,) or None
            Groups of the inner splits (e.g. a cohort column for leave-cohort-out).

        Returns
        -------
        KetaSVC
            self, fitted.

        Raises
        ------
        ValueError
            Labels not binary, a C that is not positive, or no inner training set with both
            classes.
        BadDataError, UsageError
            From :func:`check_groups`.
        """
        X, y = validate_data(self, X, y, dtype=(np.float64, np.float32))
        check_classification_targets(y)
        y_type = type_of_target(y, input_name="y", raise_unknown=True)
        if y_type != "binary":
            raise ValueError("Only binary classification is supported. The type of the target "
                             f"is {y_type}.")
        self.classes_ = np.unique(y)
        if self.classes_.size != 2:
            raise ValueError("KetaSVC needs samples of 2 classes; got 1 class")
        grid = check_c_grid(self.C_grid)
        y01 = (y == self.classes_[1]).astype(np.int64)
        cov, sites_a = check_groups(covariates, sites, X.shape[0], harmonize=self.harmonize)
        kern = KernelProvider(X, cov, sites_a, standardize=self.standardize,
                              harmonize=self.harmonize,
                              scale_kernel=getattr(self, "scale_kernel", True))
        split_groups = sites_a if groups is None else np.asarray(groups).astype(str)
        self.C_grid_ = grid
        self.cv_scores_ = None
        self.C_ = float(grid[0])
        self.kernel_scale_ = None
        if grid.size > 1:
            cv = check_cv(5 if self.cv is None else self.cv, y01, classifier=True)
            splits = [(tr, te) for tr, te in cv.split(X, y01, split_groups)
                      if np.unique(y01[tr]).size == 2]
            if not splits:
                raise ValueError(f"{cv!r}: no training set of the inner CV holds both classes")
            masks = np.zeros((len(splits), y01.size), bool)
            tests = np.zeros_like(masks)
            for t, (tr, te) in enumerate(splits):
                masks[t, tr] = True
                tests[t, te] = True
            Ks, _ = kern.kernels(masks, y01=y01)
            _, scores, _ = c_path_decisions(Ks, masks, tests, y01, grid, self.tol)
            self.cv_scores_ = scores.mean(0)
            self.C_ = float(grid[int(self.cv_scores_.argmax())])   # first max = smallest C
        self._refit(X, y01, cov, sites_a, kern)
        return self

    def _refit(self, X, y01, cov, sites_a, kern):
        """Model at ``C_`` + Platt calibration from kernels: one K = X X^T serves the full fit
        and every calibration fold when there is no per-fold ComBat/z-scoring."""
        n = X.shape[0]
        k = min(int(self.calibration_folds), int(np.bincount(y01).min()))
        masks = [np.ones(n, bool)]
        if k >= 2:
            folds = stratified_folds(y01, k, np.random.default_rng(self.random_state), sites_a)
            cal = [folds != f for f in range(k)]
            if all(np.unique(y01[m]).size == 2 for m in cal):
                masks += cal
        masks = np.array(masks)
        Ks, aux = kern.kernels(masks, keep=np.arange(len(masks)) == 0, y01=y01)
        Ktt, yy, w, idx, valid = gather(Ks, masks, y01)
        beta, b, _, _ = solve_dual(Ktt, yy, self.C_ * w, tol=self.tol)
        bfull = np.zeros((len(masks), n))
        for t in range(len(masks)):
            nv = valid[t].sum()
            bfull[t, idx[t, :nv]] = beta[t, :nv]
        params = kern.fit_params(np.ones(n, bool))
        if kern.scale_kernel:
            self.kernel_scale_ = float(aux[-1][0])
        v, wv = kern.weights(aux, 0, bfull[0])
        coef = (v @ X if v is not None else wv).astype(np.float64)
        self.coef_ = coef[None, :]
        self.intercept_ = np.array([float(b[0])])
        self.dual_coef_ = bfull[0][bfull[0] != 0]
        self.support_ = np.flatnonzero(bfull[0] != 0)
        self.cov_coef_ = params["cov_coef"]
        self.n_covariates_ = 0 if cov is None else cov.shape[1]
        self.scale_ = params.get("scale")
        self.combat_ = params.get("combat")
        if len(masks) > 1:
            fcv = np.zeros(n)
            for t in range(1, len(masks)):
                test = ~masks[t]
                fcv[test] = Ks[t][test] @ bfull[t] + b[t]
        else:                       # too few subjects per class: in-sample (documented)
            fcv = Ks[0] @ bfull[0] + b[0]
        self.platt_a_, self.platt_b_ = platt_fit(fcv, y01)

    def transform_features(self, X, covariates=None, sites=None):
        """Features after the fitted preprocessing (the space of ``coef_``).

        Parameters
        ----------
        X : array-like of shape (n, p)
            Features.
        covariates : array-like of shape (n, k) or None
            Required when the model was fitted with covariates (same columns).
        sites : array-like of shape (n,) or None
            Required when the model harmonises sites.

        Returns
        -------
        ndarray of shape (n, p)
            Preprocessed features.

        Raises
        ------
        ValueError
            Covariates or sites missing where the model needs them.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        n = X.shape[0]
        if self.n_covariates_ and covariates is None:
            raise ValueError(f"this model was fitted with {self.n_covariates_} covariates; "
                             "pass covariates=")
        cov = None if not self.n_covariates_ else np.asarray(covariates, float).reshape(n, -1)
        params = {"cov_coef": self.cov_coef_}
        if self.scale_ is not None:
            params["scale"] = self.scale_
        if self.combat_ is not None:
            if sites is None:
                raise ValueError("this model harmonises sites; pass sites=")
            params["combat"] = self.combat_
        sites_a = None if sites is None else np.asarray(sites).astype(str)
        return apply_preprocessing(X, design_matrix(cov, n), cov, sites_a, params)

    def decision_function(self, X, covariates=None, sites=None):
        """Signed distance to the hyperplane (> 0: ``classes_[1]``, responder).

        Parameters
        ----------
        X, covariates, sites
            As :meth:`transform_features`.

        Returns
        -------
        ndarray of shape (n,)
            Decision values.
        """
        Xt = self.transform_features(X, covariates, sites)
        return Xt @ self.coef_[0] + self.intercept_[0]

    def predict(self, X, covariates=None, sites=None):
        """Predicted labels (``classes_[1]`` where the decision value is > 0).

        Parameters
        ----------
        X, covariates, sites
            As :meth:`transform_features`.

        Returns
        -------
        ndarray of shape (n,)
            Labels.
        """
        d = self.decision_function(X, covariates, sites)
        return self.classes_[(d > 0).astype(int)]

    def predict_proba(self, X, covariates=None, sites=None):
        """Probabilities of both classes from the Platt sigmoid of the decision values.

        Parameters
        ----------
        X, covariates, sites
            As :meth:`transform_features`.

        Returns
        -------
        ndarray of shape (n, 2)
            Columns in the order of ``classes_``.
        """
        p1 = platt_predict(self.decision_function(X, covariates, sites), self.platt_a_,
                           self.platt_b_)
        return np.column_stack([1 - p1, p1])
