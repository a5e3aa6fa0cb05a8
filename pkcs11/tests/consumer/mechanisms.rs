//! C_GetMechanismList and C_GetMechanismInfo at the raw ABI: the exact list, in order, and
//! each mechanism's key sizes and flags, the same on every slot.

use super::raw::{functions, null};
use super::*;

const EC: CK_FLAGS = CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;

/// What the module offers: (mechanism, min key size, max key size, flags). EC sizes are in
/// bits, symmetric ones in bytes, as PKCS#11 counts them. Written out here, not read from
/// the module's table, so a change to the table shows up as a failure.
const OFFERED: [(CK_MECHANISM_TYPE, CK_ULONG, CK_ULONG, CK_FLAGS); 17] = [
    (CKM_EC_KEY_PAIR_GEN, 256, 256, CKF_GENERATE_KEY_PAIR | EC),
    (CKM_EC_EDWARDS_KEY_PAIR_GEN, 255, 255, CKF_GENERATE_KEY_PAIR),
    (CKM_ECDSA, 256, 256, CKF_SIGN | CKF_VERIFY | EC),
    (CKM_ECDSA_SHA256, 256, 256, CKF_SIGN | CKF_VERIFY | EC),
    (CKM_EDDSA, 255, 255, CKF_SIGN | CKF_VERIFY),
    (CKM_AES_KEY_GEN, 32, 32, CKF_GENERATE),
    (CKM_AES_GCM, 32, 32, CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_CHACHA20_KEY_GEN, 32, 32, CKF_GENERATE),
    (CKM_CHACHA20_POLY1305, 32, 32, CKF_ENCRYPT | CKF_DECRYPT),
    (CKM_GENERIC_SECRET_KEY_GEN, 32, 32, CKF_GENERATE),
    (CKM_SHA256_HMAC, 32, 32, CKF_SIGN | CKF_VERIFY),
    (CKM_SHA256, 0, 0, CKF_DIGEST),
    (CKM_SHA512, 0, 0, CKF_DIGEST),
    // ML-DSA and ML-KEM: the range of their public keys in bytes (PKCS#11 3.2).
    (CKM_ML_DSA_KEY_PAIR_GEN, 1312, 2592, CKF_GENERATE_KEY_PAIR),
    (CKM_ML_DSA, 1312, 2592, CKF_SIGN | CKF_VERIFY),
    (CKM_ML_KEM_KEY_PAIR_GEN, 800, 1568, CKF_GENERATE_KEY_PAIR),
    (CKM_ML_KEM, 800, 1568, CKF_ENCAPSULATE | CKF_DECAPSULATE),
];

pub(crate) fn list_and_info(slots: &[Slot]) {
    let f = functions();
    let want: Vec<CK_MECHANISM_TYPE> = OFFERED.iter().map(|m| m.0).collect();
    for slot in slots {
        let id = slot.id();
        // SAFETY: every pointer is to a live local of the right size, or null where the
        // module must only write the count.
        unsafe {
            // The count first, then the list; too small a buffer gets the count and
            // CKR_BUFFER_TOO_SMALL.
            let mut n: CK_ULONG = 0;
            assert_eq!(f.C_GetMechanismList.unwrap()(id, null(), &mut n), CKR_OK);
            assert_eq!(n, 17);
            let mut got = [0 as CK_MECHANISM_TYPE; 20];
            n = 2;
            assert_eq!(
                f.C_GetMechanismList.unwrap()(id, got.as_mut_ptr(), &mut n),
                CKR_BUFFER_TOO_SMALL
            );
            assert_eq!(n, 17);
            n = 20;
            assert_eq!(
                f.C_GetMechanismList.unwrap()(id, got.as_mut_ptr(), &mut n),
                CKR_OK
            );
            assert_eq!(got[..n as usize], want[..]);
            assert_eq!(
                f.C_GetMechanismList.unwrap()(id, got.as_mut_ptr(), null()),
                CKR_ARGUMENTS_BAD
            );
            for (mech, min, max, flags) in OFFERED {
                let mut info = CK_MECHANISM_INFO::default();
                assert_eq!(
                    f.C_GetMechanismInfo.unwrap()(id, mech, &mut info),
                    CKR_OK,
                    "{mech:#x}"
                );
                assert_eq!(
                    (info.ulMinKeySize, info.ulMaxKeySize, info.flags),
                    (min, max, flags),
                    "mechanism {mech:#x}"
                );
            }
            // Not offered: SHA-1, RSA, a vendor number.
            for absent in [
                CKM_SHA_1,
                CKM_RSA_PKCS,
                CKM_RSA_PKCS_KEY_PAIR_GEN,
                CKM_VENDOR_DEFINED,
            ] {
                let mut info = CK_MECHANISM_INFO::default();
                assert_eq!(
                    f.C_GetMechanismInfo.unwrap()(id, absent, &mut info),
                    CKR_MECHANISM_INVALID,
                    "{absent:#x}"
                );
            }
        }
    }
    // SAFETY: as above; slot 9 does not exist.
    unsafe {
        let mut n: CK_ULONG = 0;
        assert_eq!(
            f.C_GetMechanismList.unwrap()(9, null(), &mut n),
            CKR_SLOT_ID_INVALID
        );
        let mut info = CK_MECHANISM_INFO::default();
        assert_eq!(
            f.C_GetMechanismInfo.unwrap()(9, CKM_SHA256, &mut info),
            CKR_SLOT_ID_INVALID
        );
    }
}
