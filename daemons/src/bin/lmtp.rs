//! The lmtp delivery agent (smtp speaking LMTP); see `facteur_daemons::smtp`.
fn main() {
    facteur_daemons::smtp::main()
}
