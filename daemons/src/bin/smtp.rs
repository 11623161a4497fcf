//! The smtp delivery agent; see `facteur_daemons::smtp`.
fn main() {
    facteur_daemons::smtp::main()
}
