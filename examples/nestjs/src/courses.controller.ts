import { Controller, Get, Param, UseGuards } from "@nestjs/common";

import { CourseAccessGuard } from "./course-access.guard.js";

/** A route that serves course content: only to buyers with access. */
@Controller("courses")
export class CoursesController {
  @Get(":courseId/content")
  @UseGuards(CourseAccessGuard)
  content(@Param("courseId") courseId: string) {
    return { courseId, lessons: ["welcome"] };
  }
}
