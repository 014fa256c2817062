"""Recipient rules, in one place: file decoding and row rules (`rows`), the vectorised column
engine for plain CSV (`columns`, `phone_columns`, `frames`), phone numbers (`phones`) and
message segments (`segments`). Nothing here touches the database or the network."""
