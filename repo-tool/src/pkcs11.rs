//! Signing keys that live in an HSM or token, reached through PKCS#11 and named by RFC 7512
//! `pkcs11:` URIs, e.g.
//!
//! ```text
//! pkcs11:token=petrel-online;object=timestamp-2026?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/petrel/hsm.pin
//! ```
//!
//! * Path attributes pick the token (`token`, `serial`, `manufacturer`, `model`, `slot-id`)
//!   and the key (`object` = CKA_LABEL, `id` = CKA_ID, percent-encoded bytes; `type` is
//!   accepted as `private` or `public` and otherwise ignored: the key pair is found either way).
//! * Query attributes: `module-path` (else `$PETREL_PKCS11_MODULE`), and the PIN from
//!   `pin-source` (a file, `file:/path` or a plain path, first line), `pin-value` (kept in
//!   the URI: avoid outside tests), else `$PETREL_PKCS11_PIN`.
//!
//! Keys are ed25519 (signed with CKM_EDDSA) or ECDSA P-256 (CKM_ECDSA over a SHA-256
//! digest, or CKM_ECDSA_SHA256 where only that exists; the token's raw `r || s` is
//! re-encoded as DER, as file keys sign). The TUF public key is built from the token's
//! public key object (CKA_EC_PARAMS, CKA_EC_POINT), so the key id is the one the same key
//! would have as a file. A key is checked once when opened: it signs a probe message,
//! which must verify with that public key.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Slot, TokenInfo};
use cryptoki::types::AuthPin;
use petrel_client::tuf::keys::{KeyError, KeySource};
use petrel_client::tuf::schema::{Key, KeyId, KeyVal, Unrecognized};

use crate::error::{Error, Result};

/// Environment variable naming the PKCS#11 module when the URI has no `module-path`.
pub const MODULE_ENV: &str = "PETREL_PKCS11_MODULE";
/// Environment variable holding the PIN when the URI has no `pin-source` or `pin-value`.
pub const PIN_ENV: &str = "PETREL_PKCS11_PIN";
/// File extension of a key reference in the keys directory: `keys/<keyid>.pkcs11` holds
/// the URI of a token key, so `publish` and `refresh` find it like `keys/<keyid>.pem`.
pub const REFERENCE_EXT: &str = "pkcs11";

// DER of the named-curve OID 1.2.840.10045.3.1.7 (P-256), as CKA_EC_PARAMS holds it.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
// DER of the OID 1.3.101.112 (Ed25519).
const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
// DER PrintableString "edwards25519" (the PKCS#11 3.0 alternative form).
const ED25519_PARAMS_NAME: &[u8] = b"\x13\x0cedwards25519";
// DER prefix of a SubjectPublicKeyInfo for an uncompressed P-256 point.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const PROBE: &[u8] = b"petrel-repo: PKCS#11 key check";

/// A parsed RFC 7512 `pkcs11:` URI naming one key.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Pkcs11Uri {
    text: String,
    /// Token label (CKA token info `label`).
    pub token: Option<String>,
    /// Token manufacturer.
    pub manufacturer: Option<String>,
    /// Token serial number.
    pub serial: Option<String>,
    /// Token model.
    pub model: Option<String>,
    /// Slot id.
    pub slot_id: Option<u64>,
    /// Object label (CKA_LABEL).
    pub object: Option<String>,
    /// Object id (CKA_ID).
    pub id: Option<Vec<u8>>,
    /// The PKCS#11 module (shared library).
    pub module_path: Option<PathBuf>,
    /// Where the PIN is read from.
    pub pin_source: Option<String>,
    /// The PIN itself.
    pub pin_value: Option<String>,
}

impl fmt::Display for Pkcs11Uri {
    /// The URI as given, with any `pin-value` hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.text.split_once('?') {
            Some((path, query)) if self.pin_value.is_some() => {
                let q: Vec<String> = query
                    .split('&')
                    .map(|kv| match kv.split_once('=') {
                        Some(("pin-value", _)) => "pin-value=(hidden)".to_string(),
                        _ => kv.to_string(),
                    })
                    .collect();
                write!(f, "{path}?{}", q.join("&"))
            }
            _ => f.write_str(&self.text),
        }
    }
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pkcs11Uri({self})")
    }
}

/// Whether `s` is a `pkcs11:` URI (rather than a file name).
pub fn is_uri(s: &str) -> bool {
    s.len() >= 7 && s[..7].eq_ignore_ascii_case("pkcs11:")
}

fn percent_decode(s: &str) -> std::result::Result<Vec<u8>, String> {
    petrel_client::fetch::decode_path_segment(s)
        .ok_or_else(|| format!("bad percent-encoding in {s:?} (an escape is % and two hex digits)"))
}

impl FromStr for Pkcs11Uri {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if !is_uri(s) {
            return Err(format!("{s:?} is not a pkcs11: URI"));
        }
        let mut uri = Pkcs11Uri {
            text: s.to_string(),
            ..Pkcs11Uri::default()
        };
        let bad = |why: String| format!("PKCS#11 URI {uri}: {why}", uri = redact(s));
        let (path, query) = match s[7..].split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (&s[7..], None),
        };
        let text = |v: &str, name: &str| -> std::result::Result<String, String> {
            String::from_utf8(percent_decode(v)?).map_err(|_| format!("{name} is not UTF-8"))
        };
        let mut seen = Vec::new();
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad(format!("{attr:?} is not NAME=VALUE")))?;
            if seen.contains(&name) {
                return Err(bad(format!("{name} is given twice")));
            }
            seen.push(name);
            let t = || text(value, name).map_err(bad);
            match name {
                "token" => uri.token = Some(t()?),
                "manufacturer" => uri.manufacturer = Some(t()?),
                "serial" => uri.serial = Some(t()?),
                "model" => uri.model = Some(t()?),
                "object" => uri.object = Some(t()?),
                "id" => uri.id = Some(percent_decode(value).map_err(bad)?),
                "slot-id" => {
                    uri.slot_id = Some(
                        t()?.parse()
                            .map_err(|_| bad(format!("slot-id {value:?} is not a number")))?,
                    )
                }
                "type" => match t()?.as_str() {
                    "private" | "public" => {}
                    other => {
                        return Err(bad(format!(
                            "type={other} does not name a key; use type=private (or leave it out)"
                        )))
                    }
                },
                other => {
                    return Err(bad(format!(
                        "attribute {other:?} is not supported (use token, serial, manufacturer, \
                         model, slot-id, object, id, type)"
                    )))
                }
            }
        }
        for attr in query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|a| !a.is_empty())
        {
            let (name, value) = attr
                .split_once('=')
                .ok_or_else(|| bad(format!("{attr:?} is not NAME=VALUE")))?;
            if seen.contains(&name) {
                return Err(bad(format!("{name} is given twice")));
            }
            seen.push(name);
            let t = || text(value, name).map_err(bad);
            match name {
                "module-path" => uri.module_path = Some(PathBuf::from(t()?)),
                "pin-source" => uri.pin_source = Some(t()?),
                "pin-value" => uri.pin_value = Some(t()?),
                "module-name" => {
                    return Err(bad(
                        "module-name is not supported; give the module's file with module-path=".into(),
                    ))
                }
                other => {
                    return Err(bad(format!(
                        "query attribute {other:?} is not supported (use module-path, pin-source, pin-value)"
                    )))
                }
            }
        }
        if uri.object.is_none() && uri.id.is_none() {
            return Err(bad(
                "names no key: add object=LABEL (the key's CKA_LABEL) or id=HEX (%-encoded CKA_ID)"
                    .into(),
            ));
        }
        Ok(uri)
    }
}

fn redact(s: &str) -> String {
    Pkcs11Uri {
        text: s.to_string(),
        pin_value: s.contains("pin-value=").then(String::new),
        ..Pkcs11Uri::default()
    }
    .to_string()
}

impl Pkcs11Uri {
    /// The URI exactly as given (a `pin-value` included: for storing, not for showing).
    pub fn as_given(&self) -> &str {
        &self.text
    }

    /// The PKCS#11 module: `module-path`, else `$PETREL_PKCS11_MODULE`.
    pub fn module(&self) -> Result<PathBuf> {
        if let Some(p) = &self.module_path {
            return Ok(p.clone());
        }
        match std::env::var_os(MODULE_ENV) {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(self.error(format!(
                "no PKCS#11 module: add ?module-path=/path/to/module.so to the URI or set \
                 {MODULE_ENV} (SoftHSM2's is /usr/lib/softhsm/libsofthsm2.so)"
            ))),
        }
    }

    /// The PIN and where it came from, if any is configured.
    fn pin(&self) -> Result<Option<(String, String)>> {
        if let Some(v) = &self.pin_value {
            return Ok(Some((v.clone(), "pin-value in the URI".into())));
        }
        if let Some(src) = &self.pin_source {
            if src.starts_with('|') {
                return Err(self.error(
                    "pin-source commands (|...) are not supported; use pin-source=file:/path"
                        .into(),
                ));
            }
            let path = src
                .strip_prefix("file://")
                .or_else(|| src.strip_prefix("file:"))
                .unwrap_or(src);
            let text = std::fs::read_to_string(path).map_err(|e| {
                self.error(format!(
                    "cannot read the PIN from pin-source {path}: {e}; create the file (mode 0600) \
                     with the token's user PIN"
                ))
            })?;
            let pin = text
                .lines()
                .next()
                .unwrap_or_default()
                .trim_end()
                .to_string();
            return Ok(Some((pin, format!("pin-source {path}"))));
        }
        match std::env::var(PIN_ENV) {
            Ok(p) if !p.is_empty() => Ok(Some((p, format!("${PIN_ENV}")))),
            _ => Ok(None),
        }
    }

    fn error(&self, reason: String) -> Error {
        Error::Usage(format!("PKCS#11 key {self}: {reason}"))
    }

    fn token_desc(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("token", &self.token),
            ("serial", &self.serial),
            ("manufacturer", &self.manufacturer),
            ("model", &self.model),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={v:?}"));
            }
        }
        if let Some(s) = self.slot_id {
            parts.push(format!("slot-id={s}"));
        }
        if parts.is_empty() {
            "any token".into()
        } else {
            parts.join(", ")
        }
    }

    fn object_desc(&self) -> String {
        let mut parts = Vec::new();
        if let Some(o) = &self.object {
            parts.push(format!("object={o:?}"));
        }
        if let Some(id) = &self.id {
            parts.push(format!("id={}", hex::encode(id)));
        }
        parts.join(", ")
    }

    fn object_template(&self, class: ObjectClass) -> Vec<Attribute> {
        let mut t = vec![Attribute::Class(class)];
        if let Some(o) = &self.object {
            t.push(Attribute::Label(o.as_bytes().to_vec()));
        }
        if let Some(id) = &self.id {
            t.push(Attribute::Id(id.clone()));
        }
        t
    }
}

/// One process-wide context per module: PKCS#11 modules are initialized once per process.
fn context(uri: &Pkcs11Uri, module: &Path) -> Result<Pkcs11> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut map = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(c) = map.get(module) {
        return Ok(c.clone());
    }
    if !module.is_file() {
        return Err(uri.error(format!(
            "PKCS#11 module {} does not exist; install the token's PKCS#11 library (for SoftHSM2: \
             apt-get install softhsm2) or fix module-path / {MODULE_ENV}",
            module.display()
        )));
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        uri.error(format!(
            "cannot load PKCS#11 module {}: {e}; is it a PKCS#11 library for this machine?",
            module.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(uri.error(format!(
                "PKCS#11 module {} failed to initialize: {e}{}",
                module.display(),
                if module.to_string_lossy().contains("softhsm") {
                    " (SoftHSM2 reads its configuration from $SOFTHSM2_CONF or /etc/softhsm/softhsm2.conf: \
                     is its tokendir readable?)"
                } else {
                    ""
                }
            )))
        }
    }
    map.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// Asks the token about one mechanism at a time (listing them all makes the PKCS#11
/// binding complain about every vendor mechanism it does not know).
struct Mechanisms<'a> {
    ctx: &'a Pkcs11,
    slot: Slot,
}

impl Mechanisms<'_> {
    fn contains(&self, m: &MechanismType) -> bool {
        self.ctx.get_mechanism_info(self.slot, *m).is_ok()
    }
}

fn describe_token(t: &TokenInfo) -> String {
    format!("{:?} (serial {})", t.label(), t.serial_number())
}

fn find_slot(ctx: &Pkcs11, uri: &Pkcs11Uri) -> Result<(Slot, TokenInfo)> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| uri.error(format!("cannot list the module's slots: {e}")))?;
    let mut all = Vec::new();
    let mut matching = Vec::new();
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        let ok = uri.token.as_deref().is_none_or(|v| info.label() == v)
            && uri
                .serial
                .as_deref()
                .is_none_or(|v| info.serial_number() == v)
            && uri
                .manufacturer
                .as_deref()
                .is_none_or(|v| info.manufacturer_id() == v)
            && uri.model.as_deref().is_none_or(|v| info.model() == v)
            && uri.slot_id.is_none_or(|v| slot.id() == v);
        all.push(describe_token(&info));
        if ok {
            matching.push((slot, info));
        }
    }
    match matching.len() {
        1 => Ok(matching.pop().expect("one")),
        0 => Err(uri.error(format!(
            "no token matches {}; tokens present: {}. Fix token= in the URI (or initialize the token)",
            uri.token_desc(),
            if all.is_empty() { "none".into() } else { all.join(", ") }
        ))),
        n => Err(uri.error(format!(
            "{n} tokens match {}: {}; add serial= to the URI to pick one",
            uri.token_desc(),
            matching
                .iter()
                .map(|(_, t)| describe_token(t))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn login(session: &Session, info: &TokenInfo, uri: &Pkcs11Uri) -> Result<Option<String>> {
    if !info.login_required() {
        return Ok(None);
    }
    let label = info.label();
    let Some((pin, source)) = uri.pin()? else {
        if info.protected_authentication_path() {
            return match session.login(UserType::User, None) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(None),
                Err(e) => Err(uri.error(format!("login to token {label:?} failed: {e}"))),
            };
        }
        return Err(uri.error(format!(
            "token {label:?} needs its user PIN: add pin-source=file:/path/to/pin-file to the URI's \
             query or set {PIN_ENV}"
        )));
    };
    match session.login(UserType::User, Some(&AuthPin::from(pin.clone()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(Some(pin)),
        Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange, _)) => {
            Err(uri.error(format!(
                "wrong PIN for token {label:?} (the PIN came from {source}); put the token's user PIN \
                 there. Careful: after a few wrong PINs the token locks the PIN"
            )))
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(uri.error(format!(
            "the user PIN of token {label:?} is locked after too many wrong PINs; unlock it with the \
             security officer PIN using the token's tools"
        ))),
        Err(CkError::Pkcs11(RvError::UserPinNotInitialized, _)) => Err(uri.error(format!(
            "token {label:?} has no user PIN yet; initialize it with the token's tools"
        ))),
        Err(e) => Err(uri.error(format!("login to token {label:?} failed: {e}"))),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    Ed25519,
    /// ECDSA P-256: CKM_ECDSA over our SHA-256 digest (`prehash`), or CKM_ECDSA_SHA256.
    EcdsaP256 {
        prehash: bool,
    },
}

struct Inner {
    uri: Pkcs11Uri,
    token_label: String,
    session: Mutex<Session>,
    handle: ObjectHandle,
    alg: Alg,
    /// Kept only for keys that need the PIN again before every signature
    /// (CKA_ALWAYS_AUTHENTICATE, e.g. smart card signature keys).
    always_auth_pin: Option<String>,
    public: Key,
    key_id: KeyId,
}

/// A signing key in a PKCS#11 token. Cheap to clone (the session is shared).
#[derive(Clone)]
pub struct Pkcs11Key {
    inner: Arc<Inner>,
}

impl fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Pkcs11Key({} {} on token {:?})",
            self.inner.public.keytype, self.inner.key_id, self.inner.token_label
        )
    }
}

/// The kind of key [`generate`] creates in a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerateType {
    /// Ed25519 (needs CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA).
    Ed25519,
    /// ECDSA P-256 (needs CKM_EC_KEY_PAIR_GEN and CKM_ECDSA).
    EcdsaP256,
}

fn attr_bytes(attrs: &[Attribute], t: AttributeType) -> Option<Vec<u8>> {
    attrs.iter().find_map(|a| match (a, t) {
        (Attribute::Id(v), AttributeType::Id)
        | (Attribute::Label(v), AttributeType::Label)
        | (Attribute::EcParams(v), AttributeType::EcParams)
        | (Attribute::EcPoint(v), AttributeType::EcPoint) => Some(v.clone()),
        _ => None,
    })
}

fn attr_key_type(attrs: &[Attribute]) -> Option<CkKeyType> {
    attrs.iter().find_map(|a| match a {
        Attribute::KeyType(k) => Some(*k),
        _ => None,
    })
}

fn attr_bool(attrs: &[Attribute], t: AttributeType) -> Option<bool> {
    attrs.iter().find_map(|a| match (a, t) {
        (Attribute::AlwaysAuthenticate(b), AttributeType::AlwaysAuthenticate)
        | (Attribute::Sign(b), AttributeType::Sign) => Some(*b),
        _ => None,
    })
}

/// CKA_EC_POINT is a DER OCTET STRING holding the point; some tokens give the raw point.
fn ec_point(bytes: &[u8], len: usize) -> Option<Vec<u8>> {
    if bytes.len() == len + 2 && bytes[0] == 0x04 && bytes[1] as usize == len {
        return Some(bytes[2..].to_vec());
    }
    (bytes.len() == len).then(|| bytes.to_vec())
}

/// Raw `r || s` (as PKCS#11 returns it) to a DER ECDSA-Sig-Value.
fn ecdsa_raw_to_der(raw: &[u8]) -> Vec<u8> {
    fn int(v: &[u8]) -> Vec<u8> {
        let start = v.iter().position(|b| *b != 0).unwrap_or(v.len() - 1);
        let v = &v[start..];
        let mut out = vec![0x02];
        let pad = v[0] & 0x80 != 0;
        out.push((v.len() + usize::from(pad)) as u8);
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
        out
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = int(r);
    body.extend(int(s));
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

fn public_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("PUBLIC KEY", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn tuf_key(keytype: &str, scheme: &str, public: String) -> Key {
    Key {
        keytype: keytype.into(),
        scheme: scheme.into(),
        keyval: KeyVal {
            public,
            unrecognized: Unrecognized::new(),
        },
        unrecognized: Unrecognized::new(),
    }
}

fn unsupported_mechanism(uri: &Pkcs11Uri, label: &str, mech: &str, what: &str) -> Error {
    uri.error(format!(
        "token {label:?} does not support {mech}, needed {what}; use an ECDSA P-256 key instead \
         (CKM_ECDSA, which nearly every token supports): `petrel-repo key generate --type ecdsa \
         --output 'pkcs11:token=...;object=...'`"
    ))
}

/// Opens the key a URI names (once per process; later calls share the session).
pub fn open(uri: &Pkcs11Uri) -> Result<Pkcs11Key> {
    static OPEN: OnceLock<Mutex<HashMap<String, Pkcs11Key>>> = OnceLock::new();
    let mut map = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(k) = map.get(&uri.text) {
        return Ok(k.clone());
    }
    let k = open_uncached(uri)?;
    map.insert(uri.text.clone(), k.clone());
    Ok(k)
}

fn open_uncached(uri: &Pkcs11Uri) -> Result<Pkcs11Key> {
    let module = uri.module()?;
    let ctx = context(uri, &module)?;
    let (slot, info) = find_slot(&ctx, uri)?;
    let label = info.label().to_string();
    let session = ctx
        .open_ro_session(slot)
        .map_err(|e| uri.error(format!("cannot open a session on token {label:?}: {e}")))?;
    let pin = login(&session, &info, uri)?;
    let ck = |what: &str| {
        let label = label.clone();
        let what = what.to_string();
        move |e: CkError| uri.error(format!("{what} on token {label:?} failed: {e}"))
    };

    let found = session
        .find_objects(&uri.object_template(ObjectClass::PRIVATE_KEY))
        .map_err(ck("finding the private key"))?;
    let handle = match found.as_slice() {
        [h] => *h,
        [] => {
            let present = list_private_keys(&session);
            return Err(uri.error(format!(
                "no private key with {} on token {label:?} (private keys there: {}). Fix object= or \
                 id= in the URI, or create the key: `petrel-repo key generate --type ecdsa --output \
                 'pkcs11:token={label};object=NAME?module-path={}'`",
                uri.object_desc(),
                if present.is_empty() {
                    "none".into()
                } else {
                    present.join(", ")
                },
                module.display()
            )));
        }
        many => {
            return Err(uri.error(format!(
                "{} private keys on token {label:?} match {}; add id= to the URI to pick one",
                many.len(),
                uri.object_desc()
            )))
        }
    };
    let attrs = session
        .get_attributes(
            handle,
            &[
                AttributeType::KeyType,
                AttributeType::Id,
                AttributeType::Label,
                AttributeType::AlwaysAuthenticate,
                AttributeType::Sign,
            ],
        )
        .map_err(ck("reading the private key's attributes"))?;
    if attr_bool(&attrs, AttributeType::Sign) == Some(false) {
        return Err(uri.error(format!(
            "the private key on token {label:?} may not sign (CKA_SIGN is false); create a signing key"
        )));
    }
    let always_auth = attr_bool(&attrs, AttributeType::AlwaysAuthenticate).unwrap_or(false);
    let key_type = attr_key_type(&attrs);

    // The public key object of the pair: same CKA_ID, else same label.
    let mut tpl = vec![Attribute::Class(ObjectClass::PUBLIC_KEY)];
    match (
        attr_bytes(&attrs, AttributeType::Id).filter(|i| !i.is_empty()),
        attr_bytes(&attrs, AttributeType::Label).filter(|l| !l.is_empty()),
    ) {
        (Some(id), _) => tpl.push(Attribute::Id(id)),
        (None, Some(l)) => tpl.push(Attribute::Label(l)),
        (None, None) => tpl = uri.object_template(ObjectClass::PUBLIC_KEY),
    }
    let pubs = session
        .find_objects(&tpl)
        .map_err(ck("finding the public key"))?;
    let Some(&pub_handle) = pubs.first() else {
        return Err(uri.error(format!(
            "token {label:?} holds the private key but no public key object for it (CKO_PUBLIC_KEY \
             with the same id or label), so its TUF key cannot be built; import the public key \
             next to the private key"
        )));
    };
    let pattrs = session
        .get_attributes(
            pub_handle,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::EcPoint,
            ],
        )
        .map_err(ck("reading the public key"))?;
    let key_type = key_type.or_else(|| attr_key_type(&pattrs));
    let params = attr_bytes(&pattrs, AttributeType::EcParams).unwrap_or_default();
    let point = attr_bytes(&pattrs, AttributeType::EcPoint).unwrap_or_default();
    let mechs = Mechanisms { ctx: &ctx, slot };

    let (alg, public) = match key_type {
        Some(CkKeyType::EC_EDWARDS) => {
            if params != ED25519_PARAMS && params != ED25519_PARAMS_NAME {
                return Err(uri.error(format!(
                    "the key on token {label:?} is an Edwards key but not ed25519 (CKA_EC_PARAMS {}); \
                     Petrel signs with ed25519 or ECDSA P-256",
                    hex::encode(&params)
                )));
            }
            let raw = ec_point(&point, 32).ok_or_else(|| {
                uri.error(format!(
                    "malformed ed25519 public key on token {label:?} (CKA_EC_POINT {})",
                    hex::encode(&point)
                ))
            })?;
            if !mechs.contains(&MechanismType::EDDSA) {
                return Err(unsupported_mechanism(
                    uri,
                    &label,
                    "CKM_EDDSA",
                    "to sign with an ed25519 key",
                ));
            }
            (Alg::Ed25519, Key::ed25519(&raw))
        }
        Some(CkKeyType::EC) => {
            if params != P256_PARAMS {
                return Err(uri.error(format!(
                    "the ECDSA key on token {label:?} is not on curve P-256 (CKA_EC_PARAMS {}); \
                     TUF's ecdsa-sha2-nistp256 needs P-256: create a P-256 key (or use ed25519)",
                    hex::encode(&params)
                )));
            }
            let raw = ec_point(&point, 65)
                .filter(|p| p[0] == 0x04)
                .ok_or_else(|| {
                    uri.error(format!(
                        "malformed P-256 public key on token {label:?} (CKA_EC_POINT {}; expected an \
                         uncompressed point)",
                        hex::encode(&point)
                    ))
                })?;
            let prehash = if mechs.contains(&MechanismType::ECDSA) {
                true
            } else if mechs.contains(&MechanismType::ECDSA_SHA256) {
                false
            } else {
                return Err(uri.error(format!(
                    "token {label:?} supports neither CKM_ECDSA nor CKM_ECDSA_SHA256, needed to sign \
                     with an ECDSA P-256 key"
                )));
            };
            let mut spki = P256_SPKI_PREFIX.to_vec();
            spki.extend_from_slice(&raw);
            (
                Alg::EcdsaP256 { prehash },
                tuf_key("ecdsa", "ecdsa-sha2-nistp256", public_pem(&spki)),
            )
        }
        other => {
            return Err(uri.error(format!(
                "the key on token {label:?} has type {}, which Petrel cannot sign with; use an \
                 ECDSA P-256 key (CKM_ECDSA) or, where the token supports CKM_EDDSA, ed25519",
                other
                    .map(|k| k.to_string())
                    .unwrap_or_else(|| "(unknown)".into())
            )))
        }
    };
    let key_id = public.key_id();
    let key = Pkcs11Key {
        inner: Arc::new(Inner {
            uri: uri.clone(),
            token_label: label.clone(),
            session: Mutex::new(session),
            handle,
            alg,
            always_auth_pin: if always_auth { pin } else { None },
            public,
            key_id,
        }),
    };
    let probe = key.sign(PROBE).map_err(|e| uri.error(e.to_string()))?;
    key.inner.public.verify(PROBE, &probe).map_err(|_| {
        uri.error(format!(
            "a signature by the private key does not verify with the public key read from token \
             {label:?}: the public key object with the same id or label belongs to another key; \
             give the pair one CKA_ID"
        ))
    })?;
    Ok(key)
}

fn list_private_keys(session: &Session) -> Vec<String> {
    let Ok(handles) = session.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)]) else {
        return Vec::new();
    };
    handles
        .into_iter()
        .filter_map(|h| {
            let a = session
                .get_attributes(h, &[AttributeType::Label, AttributeType::Id])
                .ok()?;
            let label = attr_bytes(&a, AttributeType::Label).unwrap_or_default();
            let id = attr_bytes(&a, AttributeType::Id).unwrap_or_default();
            Some(format!(
                "object={:?} id={}",
                String::from_utf8_lossy(&label),
                hex::encode(id)
            ))
        })
        .collect()
}

impl Pkcs11Key {
    /// The URI the key was opened from.
    pub fn uri(&self) -> &Pkcs11Uri {
        &self.inner.uri
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.inner.token_label
    }

    fn sign_inner(&self, message: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let i = &self.inner;
        let session = i.session.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pin) = &i.always_auth_pin {
            session
                .login(UserType::ContextSpecific, Some(&AuthPin::from(pin.clone())))
                .map_err(|e| format!("context-specific login failed: {e}"))?;
        }
        let explain = |e: CkError| match e {
            CkError::Pkcs11(RvError::MechanismInvalid, _) => match i.alg {
                Alg::Ed25519 => "the token refused CKM_EDDSA for this key; use an ECDSA P-256 key \
                                 (CKM_ECDSA) instead"
                    .to_string(),
                Alg::EcdsaP256 { .. } => "the token refused CKM_ECDSA for this key".to_string(),
            },
            CkError::Pkcs11(RvError::KeyFunctionNotPermitted, _) => {
                "the key may not sign (CKA_SIGN is false)".to_string()
            }
            CkError::Pkcs11(RvError::UserNotLoggedIn, _) => format!(
                "the token wants a login: add pin-source=file:/path to the URI or set {PIN_ENV}"
            ),
            e => e.to_string(),
        };
        match i.alg {
            Alg::Ed25519 => session
                .sign(
                    &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                    i.handle,
                    message,
                )
                .map_err(explain),
            Alg::EcdsaP256 { prehash } => {
                let raw = if prehash {
                    let digest = ring::digest::digest(&ring::digest::SHA256, message);
                    session.sign(&Mechanism::Ecdsa, i.handle, digest.as_ref())
                } else {
                    session.sign(&Mechanism::EcdsaSha256, i.handle, message)
                }
                .map_err(explain)?;
                match raw.len() {
                    64 => Ok(ecdsa_raw_to_der(&raw)),
                    _ if raw.first() == Some(&0x30) => Ok(raw),
                    n => Err(format!(
                        "the token returned a {n}-byte ECDSA signature; expected 64"
                    )),
                }
            }
        }
    }
}

impl KeySource for Pkcs11Key {
    fn public_key(&self) -> &Key {
        &self.inner.public
    }

    fn key_id(&self) -> &KeyId {
        &self.inner.key_id
    }

    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, KeyError> {
        self.sign_inner(message).map_err(|e| {
            KeyError::Sign(format!(
                "PKCS#11 key {} on token {:?}: {e}",
                self.inner.uri, self.inner.token_label
            ))
        })
    }
}

/// Generates a key pair in the token the URI names, labelled with its `object` (and with
/// its `id`, else a random one), private key sensitive and not extractable; returns it
/// opened.
pub fn generate(uri: &Pkcs11Uri, kind: GenerateType) -> Result<Pkcs11Key> {
    let Some(object) = uri.object.clone() else {
        return Err(uri.error("give the new key a label with object=NAME".into()));
    };
    let module = uri.module()?;
    let ctx = context(uri, &module)?;
    let (slot, info) = find_slot(&ctx, uri)?;
    let label = info.label().to_string();
    let session = ctx.open_rw_session(slot).map_err(|e| {
        uri.error(format!(
            "cannot open a read-write session on token {label:?}: {e}"
        ))
    })?;
    login(&session, &info, uri)?;
    let existing = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(object.as_bytes().to_vec()),
        ])
        .map_err(|e| uri.error(format!("finding objects on token {label:?} failed: {e}")))?;
    if !existing.is_empty() {
        return Err(uri.error(format!(
            "token {label:?} already holds a private key labelled {object:?}; choose another object= \
             (a key is never replaced)"
        )));
    }
    let mechs = Mechanisms { ctx: &ctx, slot };
    let (gen, params) = match kind {
        GenerateType::Ed25519 => {
            for (m, name) in [
                (
                    MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
                    "CKM_EC_EDWARDS_KEY_PAIR_GEN",
                ),
                (MechanismType::EDDSA, "CKM_EDDSA"),
            ] {
                if !mechs.contains(&m) {
                    return Err(unsupported_mechanism(
                        uri,
                        &label,
                        name,
                        "for an ed25519 key",
                    ));
                }
            }
            (Mechanism::EccEdwardsKeyPairGen, ED25519_PARAMS)
        }
        GenerateType::EcdsaP256 => {
            if !mechs.contains(&MechanismType::ECC_KEY_PAIR_GEN) {
                return Err(uri.error(format!(
                    "token {label:?} does not support CKM_EC_KEY_PAIR_GEN, needed to create an ECDSA \
                     P-256 key; create the key with the token's own tools and name it by URI"
                )));
            }
            (Mechanism::EccKeyPairGen, P256_PARAMS)
        }
    };
    let id = match &uri.id {
        Some(id) => id.clone(),
        None => {
            let mut id = [0u8; 8];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
                .map_err(|_| uri.error("random generator failed".into()))?;
            id.to_vec()
        }
    };
    let common = [
        Attribute::Token(true),
        Attribute::Label(object.as_bytes().to_vec()),
        Attribute::Id(id),
    ];
    let mut public = vec![
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::EcParams(params.to_vec()),
    ];
    public.extend(common.iter().cloned());
    let mut private = vec![
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ];
    private.extend(common.iter().cloned());
    session
        .generate_key_pair(&gen, &public, &private)
        .map_err(|e| uri.error(format!("generating the key on token {label:?} failed: {e}")))?;
    drop(session);
    open(uri)
}

/// Reads a key reference file (`keys/<keyid>.pkcs11`): the first line that is neither
/// empty nor a `#` comment is the URI.
pub fn read_reference(path: &Path) -> Result<Pkcs11Uri> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| Error::Usage(format!("{}: holds no pkcs11: URI", path.display())))?;
    line.parse()
        .map_err(|e: String| Error::Usage(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_attributes_are_parsed_and_decoded() {
        let u: Pkcs11Uri = "pkcs11:token=My%20Token;object=ts;id=%01%ff;type=private\
                            ?module-path=/usr/lib/x.so&pin-source=file:/etc/pin"
            .parse()
            .unwrap();
        assert_eq!(u.token.as_deref(), Some("My Token"));
        assert_eq!(u.object.as_deref(), Some("ts"));
        assert_eq!(u.id.as_deref(), Some(&[1u8, 0xff][..]));
        assert_eq!(u.module_path.as_deref(), Some(Path::new("/usr/lib/x.so")));
        assert_eq!(u.pin_source.as_deref(), Some("file:/etc/pin"));
    }

    #[test]
    fn bad_uris_are_explained() {
        let e = "pkcs11:token=t".parse::<Pkcs11Uri>().unwrap_err();
        assert!(e.contains("object="), "{e}");
        let e = "pkcs11:token=t;object=a;colour=red"
            .parse::<Pkcs11Uri>()
            .unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = "pkcs11:object=a;object=b".parse::<Pkcs11Uri>().unwrap_err();
        assert!(e.contains("twice"), "{e}");
        // An escape is `%` and two hex digits; a sign is not a digit.
        for bad in [
            "pkcs11:object=a%zz",
            "pkcs11:object=a%+1",
            "pkcs11:object=a%4",
        ] {
            let e = bad.parse::<Pkcs11Uri>().unwrap_err();
            assert!(e.contains("bad percent-encoding"), "{bad}: {e}");
        }
        let e = "pkcs11:object=a?module-name=softhsm2"
            .parse::<Pkcs11Uri>()
            .unwrap_err();
        assert!(e.contains("module-path"), "{e}");
    }

    #[test]
    fn pin_values_are_never_shown() {
        let u: Pkcs11Uri = "pkcs11:object=a?pin-value=1234&module-path=/m.so"
            .parse()
            .unwrap();
        let shown = u.to_string();
        assert!(!shown.contains("1234"), "{shown}");
        assert!(shown.contains("module-path=/m.so"), "{shown}");
        let e = "pkcs11:object=a;bogus=1?pin-value=1234"
            .parse::<Pkcs11Uri>()
            .unwrap_err();
        assert!(!e.contains("1234"), "{e}");
    }

    #[test]
    fn raw_ecdsa_signatures_become_der_that_verifies() {
        use ring::signature::KeyPair;
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            doc.as_ref(),
            &rng,
        )
        .unwrap();
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(kp.public_key().as_ref());
        let key = tuf_key("ecdsa", "ecdsa-sha2-nistp256", public_pem(&spki));
        for _ in 0..32 {
            let raw = kp.sign(&rng, b"msg").unwrap();
            let der = ecdsa_raw_to_der(raw.as_ref());
            assert_eq!(der[0], 0x30);
            ring::signature::UnparsedPublicKey::new(
                &ring::signature::ECDSA_P256_SHA256_ASN1,
                kp.public_key().as_ref(),
            )
            .verify(b"msg", &der)
            .unwrap();
            key.verify(b"msg", &der).unwrap();
        }
        // Leading zeros are stripped and a high bit gets a zero byte.
        let mut raw = vec![0u8; 64];
        raw[31] = 1;
        raw[32] = 0x80;
        let der = ecdsa_raw_to_der(&raw);
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x01, 0x01]);
        assert_eq!(&der[5..8], &[0x02, 0x21, 0x00]);
    }

    #[test]
    fn ec_points_are_read_in_der_and_raw_form() {
        let p = [7u8; 32];
        let mut der = vec![0x04, 32];
        der.extend_from_slice(&p);
        assert_eq!(ec_point(&der, 32).unwrap(), p);
        assert_eq!(ec_point(&p, 32).unwrap(), p);
        assert!(ec_point(&p[..31], 32).is_none());
    }

    #[test]
    fn missing_module_is_named_with_the_fix() {
        let u: Pkcs11Uri = "pkcs11:token=t;object=a?module-path=/nonexistent/libp11.so"
            .parse()
            .unwrap();
        let e = open(&u).unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/libp11.so") && e.contains("does not exist"),
            "{e}"
        );
        assert!(e.contains("pkcs11:token=t;object=a"), "{e}");
    }
}
