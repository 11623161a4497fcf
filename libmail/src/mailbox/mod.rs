//! Mailbox writers (Maildir, mbox): being written.
