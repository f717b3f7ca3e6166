"""The service's model: the pure domain rules (``domain``), the tables (``tables``), and the
use cases (``services``) that both the HTTP API and the actors call."""
