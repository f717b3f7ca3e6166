"""Safe to deploy: every stored CVC records the key it was made with.

- ``gift_certificate.cvc_key_id``: the id of the CVC key (``models.store.cvc``) that made the row's
  ``cvc_hash`` and ``cvc_encrypted``. NULL for rows made before key ids existed; those verify
  with the earlier derivation and are sealed again with the current key at their next use or
  by ``python app.py rotate-cvc-key``.
"""

SQL = """
ALTER TABLE gift_certificate ADD COLUMN cvc_key_id text;
"""


def up(migrator, db):
    db.execute_sql(SQL)


def down(migrator, db):
    db.execute_sql("ALTER TABLE gift_certificate DROP COLUMN cvc_key_id;")
