//! smtpd(8): see `facteur_daemons::smtpd`.
fn main() {
    facteur_daemons::smtpd::main();
}
