//! Portcullis connector and edge service — PLACEHOLDER: not built yet.
