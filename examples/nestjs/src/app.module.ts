import { Module } from "@nestjs/common";

import { CoursesController } from "./courses.controller.js";
import { EnrolmentConsumer } from "./enrolment.consumer.js";
import { EnrolmentStore } from "./enrolments.js";
import { PaymentsModule } from "./payments.module.js";

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

@Module({
  imports: [
    PaymentsModule.forRootAsync({
      useFactory: () => ({ url: required("PAYMENTS_URL"), token: process.env.PAYMENTS_GRPC_TOKEN, timeoutMs: 2000 }),
    }),
  ],
  controllers: [CoursesController],
  providers: [
    { provide: EnrolmentStore, useFactory: () => new EnrolmentStore(required("ENROLMENTS_DATABASE_URL")) },
    EnrolmentConsumer,
  ],
})
export class AppModule {}
