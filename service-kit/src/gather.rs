//! Gathering queued jobs into one batch: what the gateway's forwarder does
//! for calls to payments-svc and payments-svc's group commit does for
//! transactions. Whatever waits when the previous batch is done goes into
//! the next, so batches grow with the load and add no delay when idle.

use tokio::sync::mpsc;

/// `first` and whatever else is already queued, at most `max` in all, while
/// `fits` accepts each next job. Also returns the job that `fits` refused, if
/// one was taken: it goes first into the next batch.
pub fn ready<T>(
    queue: &mut mpsc::Receiver<T>,
    first: T,
    max: usize,
    mut fits: impl FnMut(&T) -> bool,
) -> (Vec<T>, Option<T>) {
    let mut jobs = vec![first];
    while jobs.len() < max {
        let Ok(job) = queue.try_recv() else { break };
        if !fits(&job) {
            return (jobs, Some(job));
        }
        jobs.push(job);
    }
    (jobs, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue_of(jobs: &[u32]) -> (mpsc::Sender<u32>, mpsc::Receiver<u32>) {
        let (sender, queue) = mpsc::channel(16);
        for job in jobs {
            assert!(sender.try_send(*job).is_ok());
        }
        (sender, queue)
    }

    #[test]
    fn takes_what_waits_up_to_the_limit_and_leaves_the_rest_queued() {
        let (_sender, mut queue) = queue_of(&[2, 3, 4, 5]);
        let (jobs, left_over) = ready(&mut queue, 1, 3, |_| true);
        assert_eq!((jobs, left_over), (vec![1, 2, 3], None));
        assert_eq!(queue.len(), 2);
    }

    #[test]
    fn stops_at_the_first_job_that_does_not_fit_and_hands_it_back() {
        let (_sender, mut queue) = queue_of(&[2, 30, 4]);
        let (jobs, left_over) = ready(&mut queue, 1, 10, |job| *job < 10);
        assert_eq!((jobs, left_over), (vec![1, 2], Some(30)));
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn an_empty_queue_gives_the_first_job_alone() {
        let (_sender, mut queue) = queue_of(&[]);
        assert_eq!(ready(&mut queue, 7, 10, |_| true), (vec![7], None));
    }
}
