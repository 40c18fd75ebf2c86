"""Email addresses as account names: validated, normalised, compared case-insensitively."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email

MAX_EMAIL_LENGTH = 254


def normalize_email(value: str) -> str:
    """The canonical form: trimmed, validated syntax, lower case. Raises ValueError."""
    candidate = value.strip()
    if len(candidate) > MAX_EMAIL_LENGTH:
        raise ValueError(f"must be at most {MAX_EMAIL_LENGTH} characters")
    try:
        checked = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid email address: {exc}") from None
    return checked.normalized.lower()
