//! Helpers of the kind end-to-end suite (see `e2e/README.md`).
