# ketabids BIDS-App image.
#
#   docker build -t ketabids/ketabids:<version> --build-arg VERSION=<version> .
#   docker run --rm -v /path/to/bids:/data:ro -v /path/to/out:/out ketabids/ketabids:<version> \
#       /data /out participant
#   apptainer build ketabids-<version>.sif docker://ketabids/ketabids:<version>
#
# Everything the pipeline reads is baked in and world-readable (locked Python packages, the
# TemplateFlow templates, the default template's derived files), so it runs offline with a
# read-only image (Apptainer), under any user id (docker run -u) and with a foreign or missing
# HOME. Runtime writes go to OUTPUT_DIR, the work directory and /tmp only.

# Exact tag; the digest is not pinned because it could not be verified offline when this was
# written. Pin it with: docker buildx imagetools inspect python:3.11.14-slim-bookworm
FROM python:3.11.14-slim-bookworm

ARG VERSION=0+unknown
ARG BUILD_DATE=unknown
ARG VCS_REF=unknown

LABEL org.opencontainers.image.title="ketabids" \
      org.opencontainers.image.description="BIDS-App predicting ketamine response in treatment-resistant depression from a T1w MRI (VBM + nested-CV linear SVC)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.authors="ketabids developers" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"

# No network at run time (Nipype's update check, TemplateFlow downloads); caches that must be
# writable point at /tmp; KETABIDS_CACHE holds pre-generated files (read-only at run time, see
# ketabids/templates.py for the fallback). ITK/OpenMP thread variables are deliberately unset:
# --omp-nthreads controls them.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 \
    NIPYPE_NO_ET=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    KETABIDS_CACHE=/opt/ketabids/cache \
    HOME=/home/ketabids

# 1. Locked dependencies: their own layer, rebuilt only when the lock changes.
COPY requirements.lock /tmp/src/requirements.lock
RUN pip install --no-cache-dir -r /tmp/src/requirements.lock

# 2. TemplateFlow templates used with --template MNI152NLin2009cAsym, 1 and 2 mm.
RUN python -c "from templateflow.api import get; \
[get('MNI152NLin2009cAsym', resolution=res, **query) \
 for res in (1, 2) \
 for query in ({'desc': None, 'suffix': 'T1w'}, {'desc': 'brain', 'suffix': 'T1w'}, \
               {'desc': 'brain', 'suffix': 'mask'}, \
               {'label': ['GM', 'WM', 'CSF'], 'suffix': 'probseg'})]" \
    && chmod -R a+rX /opt/templateflow

# 3. ketabids itself, checked against the lock.
COPY pyproject.toml README.md /tmp/src/
COPY ketabids /tmp/src/ketabids
RUN pip install --no-cache-dir -r /tmp/src/requirements.lock /tmp/src \
    && pip check \
    && rm -rf /tmp/src

# 4. Derived template files (and the templates on the registration grids) pre-generated,
#    templates checked, unprivileged user.
RUN python -c "from ketabids.templates import get_template; \
from ketabids.anat.registration import cache_template_grids; \
[cache_template_grids(get_template(name, resolution=res)) \
 for name in ('MNI152NLin2009aSym', 'MNI152NLin2009cAsym') for res in (1, 2)]" \
    && chmod -R a+rX /opt/ketabids \
    && groupadd --gid 1000 ketabids \
    && useradd --create-home --home-dir /home/ketabids --uid 1000 --gid 1000 --shell /bin/bash ketabids \
    && ketabids --version

USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["ketabids"]
