//! Answering "did this checkout become a purchase?" and "does this user own
//! this course?", from the database.

use sea_orm::{DatabaseConnection, DbErr};

use crate::db::entities::course_purchase::{Model as Purchase, PurchaseStatus};
use crate::db::purchases;

/// What a caller asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    CheckoutSession(String),
    UserCourse { user_id: String, course_id: String },
}

/// The purchase that answers `lookup`, if any. For a user and course with
/// several purchases, the one granting access (paid, not a duplicate
/// payment) wins, then the most advanced, then the latest.
pub async fn find_purchase(db: &DatabaseConnection, lookup: &Lookup) -> Result<Option<Purchase>, DbErr> {
    match lookup {
        Lookup::CheckoutSession(session_id) => purchases::find_by_session(db, session_id).await,
        Lookup::UserCourse { user_id, course_id } => {
            let all = purchases::find_by_user_course(db, user_id, course_id).await?;
            Ok(all.into_iter().max_by_key(|p| (grants_access(p), p.status.rank(), p.id)))
        }
    }
}

fn grants_access(purchase: &Purchase) -> bool {
    purchase.status == PurchaseStatus::Paid && !purchase.needs_refund
}
