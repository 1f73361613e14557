import { Inject, Injectable, Logger, type OnApplicationBootstrap, type OnApplicationShutdown } from "@nestjs/common";
import { PaymentsClient } from "@payments/client";

import { EnrolmentStore } from "./enrolments.js";

/**
 * Keeps the enrolments in step with payments-svc's change feed, for as long
 * as the application runs: from the stored cursor, each change applied with
 * its cursor in one transaction, reconnecting and resyncing by itself.
 */
@Injectable()
export class EnrolmentConsumer implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger(EnrolmentConsumer.name);
  private readonly stop = new AbortController();
  private running?: Promise<void>;

  constructor(
    @Inject(PaymentsClient) private readonly payments: PaymentsClient,
    @Inject(EnrolmentStore) private readonly store: EnrolmentStore,
  ) {}

  async onApplicationBootstrap(): Promise<void> {
    await this.store.migrate();
    this.running = this.payments
      .followChanges({
        load: () => this.store.cursor(),
        // The cursor is stored with each change; this stores where a resync ends.
        save: (cursor) => this.store.saveCursor(cursor),
        onChange: async (change) => {
          const effect = await this.store.apply(change);
          this.logger.log(`${change.kind} ${change.purchase.userId}/${change.purchase.courseId} (cursor ${change.cursor}): ${effect}`);
        },
        onEvent: (event) =>
          this.logger.warn(
            event.type === "resync"
              ? `cursor ${event.from} is no longer kept: resynced from ListPurchases, going on after ${event.resumeAfter}`
              : `reconnecting in ${event.delayMs} ms (${event.error?.message ?? "the stream ended"})`,
          ),
        signal: this.stop.signal,
      })
      .catch((error: unknown) => {
        this.logger.error(`the enrolment consumer stopped: ${error}`);
        process.exitCode = 1;
      });
  }

  async onApplicationShutdown(): Promise<void> {
    this.stop.abort();
    await this.running;
    await this.store.close();
  }
}
