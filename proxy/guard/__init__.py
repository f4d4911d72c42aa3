"""Pure decisions: no I/O, no clock reads. The server shell feeds facts in and acts on them."""
