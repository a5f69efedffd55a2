//! ferrite-certs: issues and renews certificates (ACME, CA, self-signed).
fn main() -> std::process::ExitCode {
    eprintln!("ferrite-certs: the controller is not wired yet; see controllers/certs/src/lib.rs");
    std::process::ExitCode::FAILURE
}
