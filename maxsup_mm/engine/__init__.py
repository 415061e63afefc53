"""Training-time machinery: hooks and exact-resume training loops."""
from .hooks import *  # noqa: F401,F403
from .loops import (BEFORE_FETCH, EXACT_RESUME_LOOPS,  # noqa: F401
                    ExactResumeEpochBasedTrainLoop,
                    ExactResumeIterBasedTrainLoop, exact_resume_loop_cfg)
