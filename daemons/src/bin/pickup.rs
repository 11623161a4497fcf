//! The pickup daemon; see `facteur_daemons::pickup`.
fn main() {
    facteur_daemons::pickup::main()
}
