"""The account's sender numbers."""

from api.errors import HeraldError


class InvalidPhoneNumber(HeraldError):
    code = "INVALID_PHONE_NUMBER"


class NumberNotFound(HeraldError):
    status_code = 404
    code = "NUMBER_NOT_FOUND"
