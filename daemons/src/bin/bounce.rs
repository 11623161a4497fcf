//! The bounce daemon; see `facteur_daemons::bounce`.
fn main() {
    facteur_daemons::bounce::main()
}
