//! A minimal LDAP server for PostgreSQL's `ldap` authentication (simple bind, LDAPv3):
//! PostgreSQL hands it the user's DN and the password it received, and logs the user in
//! when the bind succeeds. The tests use it to see, and judge, the password a relay sent
//! over TLS: a real login path, with the test deciding what is accepted.
//!
//! Only what a simple bind needs of BER is read: a `BindRequest` is answered with a
//! `BindResponse` (success or invalidCredentials); anything else ends the connection.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// One bind: the DN, the password, and whether it was accepted.
#[derive(Debug, Clone)]
pub struct Bind {
    pub dn: String,
    pub password: String,
    pub accepted: bool,
}

pub struct Ldap {
    pub port: u16,
    pub binds: Arc<Mutex<Vec<Bind>>>,
}

type Check = dyn Fn(&str, &str) -> bool + Send + Sync;

impl Ldap {
    /// Listens on a free loopback port; `check(dn, password)` decides each bind.
    pub fn start(check: impl Fn(&str, &str) -> bool + Send + Sync + 'static) -> Ldap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the LDAP port");
        let port = listener.local_addr().unwrap().port();
        let binds = Arc::new(Mutex::new(Vec::new()));
        let check: Arc<Check> = Arc::new(check);
        let seen = binds.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (check, seen) = (check.clone(), seen.clone());
                std::thread::spawn(move || serve(conn, &*check, &seen));
            }
        });
        Ldap { port, binds }
    }

    pub fn binds(&self) -> Vec<Bind> {
        self.binds.lock().unwrap().clone()
    }
}

/// Reads one BER element: (tag, contents).
fn read_element(r: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b).ok()?;
    let tag = b[0];
    r.read_exact(&mut b).ok()?;
    let len = if b[0] & 0x80 == 0 {
        b[0] as usize
    } else {
        let n = (b[0] & 0x7f) as usize;
        let mut bytes = vec![0u8; n];
        r.read_exact(&mut bytes).ok()?;
        bytes.iter().fold(0usize, |acc, x| (acc << 8) | *x as usize)
    };
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some((tag, body))
}

/// Splits a constructed element's contents into its elements.
fn elements(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(e) = read_element(&mut body) {
        out.push(e);
    }
    out
}

fn serve(mut conn: TcpStream, check: &Check, seen: &Mutex<Vec<Bind>>) {
    while let Some((0x30, message)) = read_element(&mut conn) {
        let parts = elements(&message);
        let (Some((0x02, id)), Some((0x60, op))) = (parts.first(), parts.get(1)) else {
            return; // unbind, or anything but a bind: done
        };
        let fields = elements(op);
        let (Some((0x04, dn)), Some((0x80, password))) = (fields.get(1), fields.get(2)) else {
            return;
        };
        let dn = String::from_utf8_lossy(dn).into_owned();
        let password = String::from_utf8_lossy(password).into_owned();
        let accepted = check(&dn, &password);
        seen.lock().unwrap().push(Bind {
            dn,
            password,
            accepted,
        });
        // BindResponse: resultCode 0 (success) or 49 (invalidCredentials), empty DN and
        // message.
        let code = if accepted { 0 } else { 49 };
        let response = [0x0a, 0x01, code, 0x04, 0x00, 0x04, 0x00];
        let mut out = vec![0x02, id.len() as u8];
        out.extend_from_slice(id);
        out.push(0x61);
        out.push(response.len() as u8);
        out.extend_from_slice(&response);
        let mut msg = vec![0x30, out.len() as u8];
        msg.extend_from_slice(&out);
        if conn.write_all(&msg).is_err() {
            return;
        }
    }
}
