"""The built-in phantom cohort: procedural 4D short-axis cine studies with ground truth."""

from factory.data.phantom.cohort import generate_cohort
from factory.data.phantom.subject import PhantomSubject, generate_subject

__all__ = ["PhantomSubject", "generate_cohort", "generate_subject"]
