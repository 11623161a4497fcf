//! The restrictions ([`Restrictions`]) as the session's [`Gate`]: the
//! engine's decision becomes the session's verdict.

use std::sync::Arc;
use std::time::Duration;

use super::restrict::{Action, Facts, Restrictions, Stage};
use super::session::{Ask, Gate, Verdict};

pub struct RestrictionGate(pub Arc<Restrictions>);

impl Gate for RestrictionGate {
    fn delay_reject(&self) -> bool {
        self.0.delay_reject()
    }

    fn may_block(&self) -> bool {
        self.0.may_block()
    }

    fn late_recipients(&self) -> bool {
        self.0.has_end_of_data()
    }

    fn ask(&self, at: Ask, f: &Facts) -> Verdict {
        let d = match at {
            Ask::Connect => self.0.check(Stage::Client, f),
            Ask::Helo => self.0.check(Stage::Helo, f),
            Ask::Mail => self.0.check(Stage::Sender, f),
            // With delay_reject it runs the client, helo and sender lists
            // first; without, only the relay and recipient lists.
            Ask::Rcpt => self.0.check_rcpt(f),
            Ask::Data => self.0.check(Stage::Data, f),
            Ask::EndOfData => self.0.check(Stage::EndOfData, f),
            Ask::Etrn => self.0.check(Stage::Etrn, f),
        };
        let hangup = d.hangup();
        let mut out = Verdict {
            reply: d.reply,
            log: d.log,
            pending_defer: d.pending_defer,
            hangup,
            ..Default::default()
        };
        for a in d.actions {
            match a {
                Action::Hold(t) => out.hold = Some(t),
                Action::Discard(t) => out.discard = Some(t),
                Action::Filter(t) => out.filter = Some(t),
                Action::Redirect(t) => out.redirect = Some(t),
                Action::Bcc(t) => out.bcc.push(t),
                Action::Prepend(t) => out.prepend.push(t),
                Action::Sleep(s) => out.sleep = Some(Duration::from_secs(s)),
                Action::Hangup => out.hangup = true,
            }
        }
        out
    }
}
