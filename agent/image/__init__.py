"""Extension images: sources, safe unpacking, validation and packing (the build's front half)."""

from agent.image.fetch import fetch_extension
from agent.image.model import FetchOptions, Problem, UnpackedExtension
from agent.image.policy import DEFAULT_POLICY, Policy, load_policy
from agent.image.validate import ValidateOptions, validate_extensions

__all__ = ["DEFAULT_POLICY", "FetchOptions", "Policy", "Problem", "UnpackedExtension",
           "ValidateOptions", "fetch_extension", "load_policy", "validate_extensions"]
