//! Shipped catalog against the User-Agent corpus.
