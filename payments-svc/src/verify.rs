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
/// several purchases, a paid one wins over the others.
pub async fn find_purchase(db: &DatabaseConnection, lookup: &Lookup) -> Result<Option<Purchase>, DbErr> {
    match lookup {
        Lookup::CheckoutSession(session_id) => purchases::find_by_session(db, session_id).await,
        Lookup::UserCourse { user_id, course_id } => {
            let all = purchases::find_by_user_course(db, user_id, course_id).await?;
            let paid = all.iter().position(|p| p.status == PurchaseStatus::Paid);
            Ok(paid.or(all.len().checked_sub(1)).map(|i| all[i].clone()))
        }
    }
}
