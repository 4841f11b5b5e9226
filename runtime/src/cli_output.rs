//! What the command-line tools print on standard output.

use std::io::Write;

/// Writes `text` to standard output. A reader that has gone away (`modelpod ... | head`) is
/// not an error: what it did not read, it did not want. `println!` would panic there.
pub fn print(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Standard output as a writer, with [`print`]'s handling of a reader that has gone away.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match std::io::stdout().lock().write_all(buf) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
            _ => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match std::io::stdout().lock().flush() {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
            _ => Ok(()),
        }
    }
}

/// [`print`] followed by a newline.
pub fn print_line(text: &str) -> std::io::Result<()> {
    print(&format!("{text}\n"))
}
