//! The end-to-end suites, one module per subject, in one test binary: built and linked once, and
//! run together so the slow waits of one suite overlap the others' (each test still starts its
//! own CA, back ends and balancer; nothing is shared between tests but the process).

mod common;

mod admin;
mod boundary;
mod browser;
mod calls;
mod cli;
mod dialogs;
mod hostile;
mod instances;
mod interop;
mod kamailio;
mod load;
mod operations;
mod operator;
mod partners;
mod poll;
mod reload;
mod servers;
mod trust;
mod wss;
