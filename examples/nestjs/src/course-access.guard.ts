import {
  type CanActivate,
  type ExecutionContext,
  ForbiddenException,
  Inject,
  Injectable,
  Logger,
  ServiceUnavailableException,
  UnauthorizedException,
} from "@nestjs/common";
import { PaymentsClient, PaymentsError } from "@payments/client";
import type { Request } from "express";

/**
 * Lets a request through only when its user has access to the course in
 * the route (`:courseId`), as payments-svc says now. Fails closed: when
 * payments-svc cannot answer, the answer is 503, never access.
 *
 * Where the user comes from is the application's business; this example
 * takes `request.user.id` (Passport's convention) or, for trying it out,
 * an `x-user-id` header.
 */
@Injectable()
export class CourseAccessGuard implements CanActivate {
  private readonly logger = new Logger(CourseAccessGuard.name);

  constructor(@Inject(PaymentsClient) private readonly payments: PaymentsClient) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    const request = context.switchToHttp().getRequest<Request & { user?: { id?: string } }>();
    const userId = request.user?.id ?? request.header("x-user-id");
    const courseId = request.params.courseId?.toString();
    if (!userId) throw new UnauthorizedException();
    if (!courseId) throw new ForbiddenException("no course in the route");
    try {
      if (await this.payments.hasAccess(userId, courseId)) return true;
    } catch (error) {
      if (error instanceof PaymentsError) {
        this.logger.warn(`access check failed: ${error.message}`);
        throw new ServiceUnavailableException("access cannot be checked right now");
      }
      throw error;
    }
    throw new ForbiddenException("no access to this course");
  }
}
