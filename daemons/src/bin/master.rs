//! The master daemon; see `facteur_daemons::master`.
fn main() {
    facteur_daemons::master::main()
}
